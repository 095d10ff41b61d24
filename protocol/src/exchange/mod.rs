//! What peers ask each other for directly (libp2p request-response and content lanes),
//! beside what they gossip: the messages and frame bodies, and the checks a receiver
//! makes before it believes a length. The node's codecs read and write the bytes; every
//! decision about them is here, where the fuzzer reaches it without a network stack.

pub mod content;
pub mod fetch;
pub mod lane;

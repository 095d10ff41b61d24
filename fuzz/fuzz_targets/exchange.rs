//! What a peer sends over a direct exchange: content requests and answers (manifests,
//! have-bitmaps, report lists, lane offers, chunk frame heads), fingerprint fetch
//! requests and answers, and content lane frames. The first byte picks the decoder;
//! whatever decodes must keep to its limits and encode back to what it was.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mirage_protocol::exchange::content::{self, Answer, ContentRequest};
use mirage_protocol::exchange::fetch::{self, FetchRequest, FetchResponse};
use mirage_protocol::exchange::lane;
use mirage_protocol::wire;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 8 {
        0 => {
            if let Ok(request) = content::decode_request(body) {
                assert_eq!(wire::decode::<ContentRequest>(&wire::encode(&request).unwrap()).unwrap(), request);
            }
        }
        1 => {
            let Some((&tag, body)) = body.split_first() else { return };
            match content::decode_answer(tag, body.to_vec()) {
                Ok(Answer::Manifest(b) | Answer::Have(b)) => assert!(b.len() <= wire::MAX_MESSAGE_BYTES),
                Ok(Answer::NotFound) => assert!(body.is_empty()),
                Ok(Answer::Lane { .. }) => assert_eq!(body.len(), 18),
                Ok(Answer::Reports(r)) => assert!(r.iter().map(Vec::len).sum::<usize>() <= body.len()),
                Err(_) => {}
            }
        }
        2 => {
            // Two declared lengths: a frame's, then a chunk frame's bitmap.
            let Some(n) = body.get(..8) else { return };
            let frame = u32::from_be_bytes(n[..4].try_into().unwrap()) as usize;
            let bitmap = u32::from_be_bytes(n[4..].try_into().unwrap()) as usize;
            if let Ok(len) = content::frame_body_len(frame, content::MAX_RESPONSE_BYTES) {
                assert!(len < content::MAX_RESPONSE_BYTES);
                if let Ok(bits) = content::chunk_bitmap_len(bitmap, len) {
                    assert!(bits <= content::MAX_BITMAP_BYTES && 4 + bits <= len);
                }
            }
        }
        3 => {
            let Some((&n, bits)) = body.split_first() else { return };
            let chunks = bits.len() * 8 - usize::from(n % 8).min(bits.len() * 8);
            if let Some(held) = content::unpack_bitmap(bits, chunks) {
                assert!(held.iter().all(|&i| i < chunks));
                let mut have = vec![false; chunks];
                for i in held {
                    have[i] = true;
                }
                let again = content::pack_bitmap(&have);
                assert_eq!(content::unpack_bitmap(&again, chunks), content::unpack_bitmap(bits, chunks));
            }
        }
        4 => {
            if let Ok(request) = wire::decode::<FetchRequest>(body) {
                assert_eq!(wire::decode::<FetchRequest>(&wire::encode(&request).unwrap()).unwrap(), request);
            }
        }
        5 => {
            if let Ok(response) = wire::decode::<FetchResponse>(body) {
                for introduction in &response.introductions {
                    let addrs: Vec<&[u8]> = introduction.addr_bytes().collect();
                    assert!(addrs.len() <= fetch::MAX_INTRODUCED_ADDRS);
                    assert!(addrs.iter().all(|a| a.len() <= fetch::MAX_ADDR_BYTES));
                }
            }
        }
        6 => {
            if let Ok(hello) = <&[u8; lane::HELLO_LEN]>::try_from(body) {
                if let Ok(ticket) = lane::decode_hello(hello) {
                    assert_eq!(&lane::encode_hello(&ticket), hello);
                }
            } else if let Ok(request) = <&[u8; lane::REQUEST_LEN]>::try_from(body) {
                let (content, index) = lane::decode_request(request);
                assert_eq!(&lane::encode_request(&content, index), request);
            }
        }
        _ => {
            let Some((head, expected)) = body.split_at_checked(lane::ANSWER_HEAD_LEN) else { return };
            let expected = expected.first().copied().map_or(0, u32::from);
            if let Ok(answer) = lane::AnswerHead::decode(head.try_into().unwrap(), expected) {
                assert_eq!(lane::AnswerHead::decode(&answer.encode(), expected), Ok(answer));
                if let lane::AnswerHead::Chunk { bitmap_len, data_len, .. } = answer {
                    assert!(bitmap_len <= lane::MAX_BITMAP_BYTES);
                    assert!(data_len <= mirage_protocol::manifest::MAX_CHUNK_SIZE as usize);
                }
            }
        }
    }
});

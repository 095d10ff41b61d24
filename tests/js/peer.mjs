// A js-libp2p peer on the Mirage overlay (tests/tests/interop.rs): it dials the
// addresses given, subscribes to the topics given, relays what gossip brings (js's
// gossipsub forwards a message to every mesh peer but the one it came from, so it
// echoes a node's own messages back to it through another node), and after SECONDS
// prints how many messages it received.
//   node peer.mjs SECONDS (TOPIC | MULTIADDR)...
// Node.js 20 (this machine's) has no Promise.withResolvers, which libp2p 2 uses.
if (!Promise.withResolvers) {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { gossipsub } = await import('@chainsafe/libp2p-gossipsub')
const { multiaddr } = await import('@multiformats/multiaddr')

const [seconds, ...args] = process.argv.slice(2)
const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    // Mirage's gossip is anonymous: every message is an envelope its author signed.
    pubsub: gossipsub({ globalSignaturePolicy: 'StrictNoSign', allowPublishToZeroTopicPeers: true }),
  },
})
console.log(`peer ${node.peerId.toString()}`)
let received = 0
node.services.pubsub.addEventListener('message', () => { received += 1 })
for (const arg of args) {
  if (arg.startsWith('/')) {
    try { await node.dial(multiaddr(arg)) } catch (e) { console.log(`dial failed ${arg}: ${e.message}`) }
  } else {
    node.services.pubsub.subscribe(arg)
  }
}
console.log('ready')
setTimeout(async () => {
  console.log(`received ${received}`)
  await node.stop()
  process.exit(0)
}, Number(seconds) * 1000)

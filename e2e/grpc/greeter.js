// The greeter client of Meridian's proxyless gRPC tests, on @grpc/grpc-js with
// @grpc/grpc-js-xds (Node). The same protocol as greeter.py's `call`:
//
//   node greeter.js TARGET SECONDS
//
// calls /greeter.Greeter/SayHello on TARGET (`xds:///host:port`, GRPC_XDS_BOOTSTRAP set) for
// SECONDS, one at a time, printing a JSON line per call: {"t", "backend"} or {"t", "error"}.
// Messages are raw bytes: no generated code. NODE_PATH points at the installed modules.

const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const [target, seconds] = [process.argv[2], Number(process.argv[3])];
const client = new grpc.Client(target, grpc.credentials.createInsecure());
const identity = (buffer) => buffer;

function sayHello(deadlineMs, waitForReady) {
  return new Promise((resolve) => {
    const options = { deadline: Date.now() + deadlineMs, waitForReady };
    client.makeUnaryRequest('/greeter.Greeter/SayHello', identity, identity, Buffer.alloc(0),
      new grpc.Metadata(), options, (error, answer) => resolve({ error, answer }));
  });
}

async function main() {
  const first = await sayHello(60000, true);
  if (first.error) {
    console.log(JSON.stringify({ t: 0, error: grpc.status[first.error.code], detail: first.error.details }));
    process.exit(1);
  }
  const start = process.hrtime.bigint();
  const elapsed = () => Number(process.hrtime.bigint() - start) / 1e9;
  console.log(JSON.stringify({ t: 0, backend: first.answer.toString() }));
  while (elapsed() < seconds) {
    const t = Math.round(elapsed() * 1000) / 1000;
    const { error, answer } = await sayHello(5000, false);
    if (error) {
      console.log(JSON.stringify({ t, error: grpc.status[error.code], detail: error.details }));
    } else {
      console.log(JSON.stringify({ t, backend: answer.toString() }));
    }
  }
  client.close();
  process.exit(0);
}

main();

// Baseline for `make bench`: Medplum's Hl7Server (@medplum/hl7) answering every message with buildAck().
// It parses each message (Hl7Message.parse) and persists nothing. Binds 127.0.0.1 on a free port and
// prints {"port": N} once it listens, like the Python servers beside it.
import { Hl7Server } from '@medplum/hl7';

const server = new Hl7Server((connection) => {
  connection.addEventListener('message', ({ message }) => {
    connection.send(message.buildAck());
  });
});

// start() passes its first argument to net.Server.listen, which also takes { port, host }:
// this keeps the server on loopback instead of every interface.
await server.start({ port: 0, host: '127.0.0.1' });
console.log(JSON.stringify({ port: server.server.address().port }));

const stop = () => server.stop({ forceDrainTimeoutMs: 500 }).finally(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

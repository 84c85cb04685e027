// Preloaded into node test peers (`node --require loopback.cjs …`): binds
// every listening socket to 127.0.0.1 (server-everything's HTTP mode binds
// all interfaces and has no host option) and prints the port it got, so
// tests can use PORT=0 and never collide.
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const callback = args.find((a) => typeof a === "function");
  let port = args[0];
  if (typeof port === "object" && port !== null) port = port.port;
  this.once("listening", () => {
    process.stderr.write(`AGENTD_TEST_PORT=${this.address().port}\n`);
  });
  return listen.call(this, { port: Number(port) || 0, host: "127.0.0.1" }, callback);
};

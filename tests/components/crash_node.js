// crash_node: a processor in plain Node.js that behaves like a Bun/TypeScript CyanPrint
// component whose handler throws: the message is printed first, then 20+ "at ..." frames,
// and the process dies, so boride sees the connection close rather than an HTTP 500.
const http = require("http");

Error.stackTraceLimit = 50;

function deep(n) {
  if (n === 0) {
    throw new ReferenceError("Can't find variable: color");
  }
  return deep(n - 1) + 1;
}

http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end('{"Status":"OK","Message":"OK"}');
    return;
  }
  let body = "";
  req.on("data", (chunk) => { body += chunk; });
  req.on("end", () => { deep(25); });
}).listen(5551, "0.0.0.0");

// node_processor: a CyanPrint processor in plain Node.js (no SDK, no npm package), behaving
// like the CyanPrint CLI's Bun/TypeScript components:
//
// * at start it writes to its home ($HOME/.cache/node-processor/started), as a runtime or SDK
//   that caches there does; without a writable home it dies before listening;
// * POST /api/process {readDir, writeDir, globs, config} copies the files matching the globs
//   from readDir to writeDir, each with config.suffix appended, plus "home.txt" (what it wrote
//   to its home) and answers {outputDir};
// * a request it cannot handle (not JSON, or config.suffix not a string) throws in the
//   handler: the message is printed above the stack frames and the process exits, so the
//   client sees the connection close, not an HTTP 500.
"use strict";
const fs = require("fs");
const http = require("http");
const os = require("os");
const path = require("path");

const PORT = 5551;
const cache = path.join(os.homedir(), ".cache", "node-processor");
fs.mkdirSync(cache, { recursive: true });
const stamp = `started by node ${process.version}\n`;
fs.writeFileSync(path.join(cache, "started"), stamp);
console.log(`node_processor: wrote ${path.join(cache, "started")}`);

function globRegex(glob) {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (glob.startsWith("**/", i)) { re += "(?:.*/)?"; i += 2; }
    else if (glob.startsWith("**", i)) { re += ".*"; i += 1; }
    else if (c === "*") re += "[^/]*";
    else if (c === "?") re += "[^/]";
    else re += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

function walk(root, rel = "") {
  const out = [];
  for (const entry of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
    const sub = rel ? `${rel}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...walk(root, sub));
    else if (entry.isFile()) out.push(sub);
  }
  return out;
}

function process_(req) {
  const { readDir, writeDir, globs, config } = req;
  if (config === null || typeof config !== "object" || typeof config.suffix !== "string") {
    throw new TypeError(`config.suffix must be a string, got ${JSON.stringify(config)}`);
  }
  for (const g of globs) {
    const base = g.root ? path.join(readDir, g.root) : readDir;
    const include = globRegex(g.glob);
    const exclude = (g.exclude || []).map(globRegex);
    for (const rel of walk(base)) {
      if (!include.test(rel) || exclude.some((x) => x.test(rel))) continue;
      const target = path.join(writeDir, rel);
      fs.mkdirSync(path.dirname(target), { recursive: true });
      fs.writeFileSync(target, fs.readFileSync(path.join(base, rel), "utf8") + config.suffix);
    }
  }
  fs.writeFileSync(path.join(writeDir, "home.txt"),
                   fs.readFileSync(path.join(cache, "started"), "utf8"));
  return { outputDir: writeDir };
}

http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end('{"Status":"OK","Message":"OK"}');
    return;
  }
  let body = "";
  req.on("data", (chunk) => { body += chunk; });
  req.on("end", () => {
    if (req.method !== "POST" || req.url !== "/api/process") {
      res.writeHead(404);
      res.end();
      return;
    }
    // Thrown here, outside any try: Node prints it and exits, as Bun does.
    const answer = process_(JSON.parse(body));
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(answer));
  });
}).listen(PORT, "0.0.0.0", () => console.log(`node_processor: listening on ${PORT}`));

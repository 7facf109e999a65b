// Self time by function from a V8 .cpuprofile (node --cpu-prof): the filter's functions by
// their Rust names (the module must keep its name section: scripts/bench-v8.sh builds it so).
//   node bench/v8/profile.cjs FILE.cpuprofile [TOP]
'use strict';
const fs = require('fs');
const profile = JSON.parse(fs.readFileSync(process.argv[2]));
const top = parseInt(process.argv[3] || '30', 10);
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const self = new Map();
for (const id of profile.samples) {
  const f = byId.get(id).callFrame;
  const name = f.functionName || f.url || '(anonymous)';
  self.set(name, (self.get(name) || 0) + 1);
}
// Legacy Rust mangling, shortened: _ZN12model_router9json_scan15TopLevelScanner4feed17h…E
function readable(name) {
  const m = name.replace(/^\$/, '').match(/^_ZN(.*)17h[0-9a-f]{16}E$/);
  if (!m) return name;
  const parts = [];
  for (let s = m[1]; s.length;) {
    const n = s.match(/^(\d+)/);
    if (!n) break;
    const len = parseInt(n[1], 10);
    parts.push(s.slice(n[1].length, n[1].length + len));
    s = s.slice(n[1].length + len);
  }
  return parts.join('::').replace(/\$LT\$/g, '<').replace(/\$GT\$/g, '>').replace(/\$u20\$/g, ' ').replace(/\.\./g, '::');
}
const total = profile.samples.length;
for (const [name, n] of [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, top)) {
  console.log(`${(100 * n / total).toFixed(1).padStart(5)} %  ${readable(name)}`);
}

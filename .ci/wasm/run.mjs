// Runs a wasm32-wasip1 program under Node's WASI (preview1).
//   node run.mjs PROGRAM.wasm DIR [ARG...]
// DIR is visible to the program as /dir; ARGs are passed as they are.
// The exit status is the program's.
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { WASI } from 'node:wasi';

const [wasmPath, dir, ...args] = process.argv.slice(2);
if (!wasmPath || !dir) {
  console.error('usage: node run.mjs PROGRAM.wasm DIR [ARG...]');
  process.exit(2);
}
const wasi = new WASI({
  version: 'preview1',
  args: [wasmPath, ...args],
  env: {},
  preopens: { '/dir': resolve(dir) },
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(wasmPath));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);

// Test-only JOSE helper for the end-to-end tests: signs arbitrary JWTs with a given private JWK, makes
// fresh keys, exports public keys as PEM. Python's standard library has no JOSE; `jose` is the library
// oidc-provider itself signs with.
//
// Reads a JSON array of jobs on stdin, writes a JSON array of results (same order) on stdout:
//   {"op": "sign", "jwk": <private JWK>, "header": {...}, "payload": {...}}  -> compact JWS string
//        header.alg is used as given (it may deliberately not fit the key: jose then refuses, so a
//        mismatching alg is signed with a fresh key of the right type by the caller instead)
//   {"op": "generate", "alg": "ES256", "kid": "x"}                             -> private JWK (alg, kid, use)
//   {"op": "pem", "jwk": <JWK>}                                               -> public key, SPKI PEM
import { CompactSign, exportJWK, exportSPKI, generateKeyPair, importJWK } from 'jose';

async function run(job) {
  switch (job.op) {
    case 'sign': {
      const key = await importJWK(job.jwk, job.header.alg);
      const bytes = new TextEncoder().encode(JSON.stringify(job.payload));
      return new CompactSign(bytes).setProtectedHeader(job.header).sign(key);
    }
    case 'generate': {
      const opts = { extractable: true };
      if (/^(RS|PS)/.test(job.alg)) opts.modulusLength = 2048;
      const { privateKey } = await generateKeyPair(job.alg, opts);
      const jwk = await exportJWK(privateKey);
      return { ...jwk, kid: job.kid, alg: job.alg, use: 'sig' };
    }
    case 'pem': {
      // Public part only: drop the private members before importing.
      const { d, p, q, dp, dq, qi, ...pub } = job.jwk;
      const alg = job.jwk.alg || (job.jwk.kty === 'RSA' ? 'RS256' : job.jwk.kty === 'OKP' ? 'EdDSA' : 'ES256');
      return exportSPKI(await importJWK(pub, alg));
    }
    default:
      throw new Error(`unknown op ${job.op}`);
  }
}

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const jobs = JSON.parse(Buffer.concat(chunks).toString('utf8'));
const out = [];
for (const job of jobs) out.push(await run(job));
process.stdout.write(JSON.stringify(out));

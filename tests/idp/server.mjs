// Test-only OpenID provider for end-to-end tests (oidc-provider 9.x).
//
// Listens on 127.0.0.1 only. Configuration via environment variables:
//   IDP_PORT              (required) TCP port
//   IDP_ISSUER            issuer URL (default http://127.0.0.1:$IDP_PORT)
//   IDP_KEYS              path to a private JWKS file ({"keys":[...]}) used as
//                         the provider's signing keys. If unset, or if the file
//                         does not exist yet, one key for IDP_JWT_ALG is
//                         generated (and written to IDP_KEYS when it is set, so
//                         that a restart reuses it).
//   IDP_ACCESS_TOKEN_TTL  access token lifetime in seconds (default 3600)
//   IDP_JWT_ALG           JWS alg of JWT access tokens (default RS256)
//   IDP_JWT_KID           optional kid of the key signing JWT access tokens
//                         (default: the first key of the file usable for the alg)
//   IDP_ID_TOKEN_ALG      alg of ID tokens (default: the alg of the first key)
//
// Resource indicators:
//   (none)               opaque access token, usable at the userinfo endpoint
//   urn:dovecot          JWT access token, aud "urn:dovecot", signed with IDP_JWT_ALG
//   urn:dovecot:opaque   opaque access token, aud "urn:dovecot" (introspectable,
//                        not usable at userinfo because it has an audience)
//
// Password grant (RFC 6749 4.3), registered through oidc-provider's registerGrantType, for the client
// "dovecot-grant" (client_secret_post) and "dovecot-grant-basic" (client_secret_basic): a user's
// password or one of their app passwords gives an opaque access token (usable at userinfo,
// introspectable). carol has MFA on: her password is refused by the grant, her app passwords are not.
//
// Test-only endpoints (not part of oidc-provider):
//   GET  /__stats        JSON {path: count} of requests seen since start/reset (password grants are
//                        also counted as "password_grant", refused ones as "password_grant_refused")
//   POST /__stats/reset  zero the counters
//   POST /__app_passwords         form username=<user>: a new app password, JSON {"password": ...}
//   POST /__app_passwords/revoke  form password=<app password>: revoked (later grants refuse it)
//   GET  /__password_grant_tokens JSON list of the access tokens password grants issued (the last
//                        1000), so the test suite can check that none of them reached a log
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import * as crypto from 'node:crypto';

import Provider, { errors } from 'oidc-provider';
import { generateKeyPair, exportJWK } from 'jose';

const env = process.env;
const PORT = Number.parseInt(env.IDP_PORT ?? '', 10);
if (!Number.isInteger(PORT) || PORT <= 0 || PORT > 65535) {
  console.error('IDP_PORT must be set to a valid port');
  process.exit(2);
}
const ISSUER = env.IDP_ISSUER || `http://127.0.0.1:${PORT}`;
const ACCESS_TOKEN_TTL = Number.parseInt(env.IDP_ACCESS_TOKEN_TTL || '3600', 10);
const JWT_ALG = env.IDP_JWT_ALG || 'RS256';
const JWT_KID = env.IDP_JWT_KID || undefined;
const KEYS_FILE = env.IDP_KEYS || undefined;
const RESOURCE_JWT = 'urn:dovecot';
const RESOURCE_OPAQUE = 'urn:dovecot:opaque';
const RESOURCE_SCOPE = 'openid email profile mail';

// ---------------------------------------------------------------- keys

function defaultAlgForJwk(jwk) {
  if (jwk.alg) return jwk.alg;
  if (jwk.kty === 'RSA') return 'RS256';
  if (jwk.kty === 'EC') return { 'P-256': 'ES256', 'P-384': 'ES384', 'P-521': 'ES512' }[jwk.crv];
  if (jwk.kty === 'OKP') return 'EdDSA';
  return undefined;
}

async function generateJwks(alg) {
  const opts = { extractable: true };
  if (alg.startsWith('RS') || alg.startsWith('PS')) opts.modulusLength = 2048;
  const { privateKey } = await generateKeyPair(alg, opts);
  const jwk = await exportJWK(privateKey);
  jwk.kid = `test-${alg.toLowerCase()}-${crypto.randomBytes(4).toString('hex')}`;
  jwk.alg = alg;
  jwk.use = 'sig';
  return { keys: [jwk] };
}

async function loadKeys() {
  if (KEYS_FILE && fs.existsSync(KEYS_FILE)) {
    const jwks = JSON.parse(fs.readFileSync(KEYS_FILE, 'utf8'));
    if (!Array.isArray(jwks.keys) || jwks.keys.length === 0) {
      throw new Error(`${KEYS_FILE}: expected {"keys": [...]} with at least one key`);
    }
    return jwks;
  }
  const jwks = await generateJwks(JWT_ALG);
  if (KEYS_FILE) {
    fs.mkdirSync(path.dirname(path.resolve(KEYS_FILE)), { recursive: true });
    fs.writeFileSync(KEYS_FILE, `${JSON.stringify(jwks, null, 2)}\n`, { mode: 0o600 });
  }
  return jwks;
}

const jwks = await loadKeys();
const ID_TOKEN_ALG = env.IDP_ID_TOKEN_ALG || defaultAlgForJwk(jwks.keys[0]) || 'RS256';

// ---------------------------------------------------------------- accounts

const USERS = {
  alice: { sub: 'alice-sub-001', password: 'alice-pw', email: 'alice@example.test', name: 'Alice Example' },
  bob: { sub: 'bob-sub-002', password: 'bob-pw', email: 'bob@example.test', name: 'Bob Example' },
  carol: { sub: 'carol-sub-003', password: 'carol-pw', email: 'carol@example.test', name: 'Carol Example', mfa: true },
  dave: { sub: 'dave-sub-004', password: 'dave-pw', email: 'DAVE@Example.TEST', name: 'Dave Example' },
};
const BY_SUB = new Map(Object.entries(USERS).map(([username, u]) => [u.sub, { username, ...u }]));

// App passwords: sha256(password) -> { username, revoked }.
const APP_PASSWORDS = new Map();
const sha256 = (s) => crypto.createHash('sha256').update(s).digest();

// By username or by email (emails compared case-insensitively, as providers do).
function findUser(login) {
  const lower = login.toLowerCase();
  return Object.entries(USERS).find(([username, u]) => username === login || u.email.toLowerCase() === lower);
}

// The account a password grant's username + password prove, or undefined. The user's own password is
// refused when the user has MFA (a grant cannot ask for a second factor); app passwords are not.
function passwordAccount(login, password) {
  const entry = findUser(login);
  if (!entry) return undefined;
  const [username, u] = entry;
  const app = APP_PASSWORDS.get(sha256(password).toString('hex'));
  if (app) return app.username === username && !app.revoked ? u : undefined;
  const ok = crypto.timingSafeEqual(sha256(password), sha256(u.password));
  return ok && !u.mfa ? u : undefined;
}

function accountClaims(u) {
  return {
    sub: u.sub,
    email: u.email,
    email_verified: true,
    preferred_username: u.username,
    name: u.name,
  };
}

async function findAccount(_ctx, id) {
  const u = BY_SUB.get(id);
  if (!u) return undefined;
  return {
    accountId: id,
    async claims() {
      return accountClaims(u);
    },
  };
}

// ---------------------------------------------------------------- provider

function resourceServer(audience, format) {
  const info = {
    scope: RESOURCE_SCOPE,
    audience,
    accessTokenTTL: ACCESS_TOKEN_TTL,
    accessTokenFormat: format,
  };
  if (format === 'jwt') {
    info.jwt = { sign: { alg: JWT_ALG, ...(JWT_KID ? { kid: JWT_KID } : {}) } };
  }
  return info;
}

const configuration = {
  clients: [
    {
      client_id: 'mail-client',
      client_secret: 'mail-client-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/callback'],
    },
    {
      client_id: 'dovecot-grant',
      client_secret: 'dovecot-grant-secret',
      token_endpoint_auth_method: 'client_secret_post',
      grant_types: ['password'],
      response_types: [],
      redirect_uris: [],
    },
    {
      client_id: 'dovecot-grant-basic',
      client_secret: 'dovecot-grant-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['password'],
      response_types: [],
      redirect_uris: [],
    },
    {
      client_id: 'dovecot',
      client_secret: 'dovecot-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
  ],
  clientDefaults: {
    id_token_signed_response_alg: ID_TOKEN_ALG,
  },
  jwks,
  findAccount,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'mail'],
  cookies: { keys: ['dovecot-oauth2-test-idp-cookie-key'] },
  interactions: {
    url(_ctx, interaction) {
      return `/interaction/${interaction.uid}`;
    },
  },
  features: {
    devInteractions: { enabled: false },
    userinfo: { enabled: true },
    revocation: { enabled: true, allowedPolicy: async () => true },
    introspection: {
      enabled: true,
      // any authenticated client (e.g. "dovecot") may introspect any token
      allowedPolicy: async () => true,
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf || undefined,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        if (resourceIndicator === RESOURCE_JWT) return resourceServer(RESOURCE_JWT, 'jwt');
        if (resourceIndicator === RESOURCE_OPAQUE) return resourceServer(RESOURCE_JWT, 'opaque');
        throw new errors.InvalidTarget();
      },
    },
  },
  extraTokenClaims: async (_ctx, token) => {
    if (token.kind !== 'AccessToken' || !token.accountId) return undefined;
    const u = BY_SUB.get(token.accountId);
    if (!u) return undefined;
    return { email: u.email, preferred_username: u.username };
  },
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: {
    AccessToken: ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 24 * 3600,
    Grant: 24 * 3600,
    Interaction: 600,
    Session: 24 * 3600,
    ClientCredentials: ACCESS_TOKEN_TTL,
  },
};

const provider = new Provider(ISSUER, configuration);

// ---------------------------------------------------------------- password grant

const PASSWORD_GRANT_SCOPES = new Set(['openid', 'email', 'profile', 'mail']);
const PASSWORD_GRANT_TOKENS = [];

async function passwordGrant(ctx) {
  const { username, password, scope } = ctx.oidc.params;
  if (!username || !password) throw new errors.InvalidRequest('username and password are required');
  stats.password_grant = (stats.password_grant || 0) + 1;
  const u = passwordAccount(username, password);
  if (!u) {
    stats.password_grant_refused = (stats.password_grant_refused || 0) + 1;
    throw new errors.InvalidGrant('invalid username or password');
  }
  const scopes = (scope || 'openid email profile').split(' ').filter((s) => PASSWORD_GRANT_SCOPES.has(s));
  const { client } = ctx.oidc;
  const grant = new provider.Grant({ accountId: u.sub, clientId: client.clientId });
  grant.addOIDCScope(scopes.join(' '));
  const grantId = await grant.save();
  const token = new provider.AccessToken({
    accountId: u.sub,
    client,
    grantId,
    gty: 'password',
    scope: scopes.join(' '),
  });
  const value = await token.save();
  PASSWORD_GRANT_TOKENS.push(value);
  if (PASSWORD_GRANT_TOKENS.length > 1000) PASSWORD_GRANT_TOKENS.shift();
  ctx.body = {
    access_token: value,
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope: token.scope,
  };
}

provider.registerGrantType('password', passwordGrant, ['username', 'password', 'scope']);

const providerCallback = provider.callback();

// ---------------------------------------------------------------- interactions

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

function sendHtml(res, status, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(`<!DOCTYPE html><html><head><meta charset="utf-8"><title>Test IdP</title></head><body>${body}</body></html>`);
}

function sendJson(res, status, obj) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(JSON.stringify(obj));
}

function loginForm(uid, message) {
  return `<h1>Sign in</h1>${message ? `<p id="error">${escapeHtml(message)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<input name="login" autofocus> <input name="password" type="password">
<button type="submit">Sign in</button></form>`;
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 65536) throw new Error('body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function grantConsent(req, res, interaction) {
  const { prompt: { details }, params, session, grantId } = interaction;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  if (details.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(details.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const newGrantId = await grant.save();
  const consent = grantId ? {} : { grantId: newGrantId };
  await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
}

// GET  /interaction/:uid         login form, or (consent prompt) automatic consent + redirect
// POST /interaction/:uid/login   form fields login (username or email), password
// POST /interaction/:uid/consent grant consent (same as the automatic one)
async function handleInteraction(req, res, pathname) {
  const m = /^\/interaction\/([^/]+)(?:\/(login|consent|abort))?$/.exec(pathname);
  if (!m) return sendHtml(res, 404, 'not found');
  const [, uid, action] = m;
  let interaction;
  try {
    interaction = await provider.interactionDetails(req, res);
  } catch (err) {
    return sendHtml(res, 400, `interaction error: ${escapeHtml(err.message)}`);
  }
  if (interaction.uid !== uid) return sendHtml(res, 400, 'interaction uid mismatch');
  const prompt = interaction.prompt.name;

  if (req.method === 'GET' && !action) {
    if (prompt === 'login') return sendHtml(res, 200, loginForm(uid));
    if (prompt === 'consent') return grantConsent(req, res, interaction);
    return sendHtml(res, 400, `unsupported prompt ${escapeHtml(prompt)}`);
  }
  if (req.method === 'POST' && action === 'login') {
    if (prompt !== 'login') return sendHtml(res, 400, 'not a login prompt');
    const form = await readForm(req);
    const login = form.get('login') || '';
    const password = form.get('password') || '';
    const entry = Object.entries(USERS).find(
      ([username, u]) => username === login || u.email === login,
    );
    const ok = entry
      && crypto.timingSafeEqual(
        crypto.createHash('sha256').update(password).digest(),
        crypto.createHash('sha256').update(entry[1].password).digest(),
      );
    if (!ok) return sendHtml(res, 401, loginForm(uid, 'invalid username or password'));
    return provider.interactionFinished(
      req,
      res,
      { login: { accountId: entry[1].sub } },
      { mergeWithLastSubmission: false },
    );
  }
  if (req.method === 'POST' && action === 'consent') {
    if (prompt !== 'consent') return sendHtml(res, 400, 'not a consent prompt');
    return grantConsent(req, res, interaction);
  }
  if (req.method === 'POST' && action === 'abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }
  return sendHtml(res, 405, 'method not allowed');
}

// ---------------------------------------------------------------- stats + server

let stats = Object.create(null);

function statsKey(pathname) {
  if (pathname.startsWith('/interaction/')) return '/interaction/:uid';
  if (pathname.startsWith('/auth/')) return '/auth/:uid';
  return pathname;
}

const server = http.createServer(async (req, res) => {
  let pathname;
  try {
    pathname = new URL(req.url, 'http://127.0.0.1').pathname;
  } catch {
    pathname = req.url;
  }
  res.on('finish', () => {
    // never log headers (Authorization) nor query strings (codes, tokens)
    console.log(`${req.method} ${pathname} ${res.statusCode}`);
  });
  try {
    if (pathname === '/__stats' && req.method === 'GET') {
      return sendJson(res, 200, { ...stats });
    }
    if (pathname === '/__stats/reset' && req.method === 'POST') {
      stats = Object.create(null);
      return sendJson(res, 200, {});
    }
    if (pathname === '/__password_grant_tokens' && req.method === 'GET') {
      return sendJson(res, 200, PASSWORD_GRANT_TOKENS);
    }
    if (pathname === '/__app_passwords' && req.method === 'POST') {
      const form = await readForm(req);
      const entry = findUser(form.get('username') || '');
      if (!entry) return sendJson(res, 404, { error: 'no such user' });
      const password = `app-${crypto.randomBytes(12).toString('base64url')}`;
      APP_PASSWORDS.set(sha256(password).toString('hex'), { username: entry[0], revoked: false });
      return sendJson(res, 200, { password });
    }
    if (pathname === '/__app_passwords/revoke' && req.method === 'POST') {
      const form = await readForm(req);
      const app = APP_PASSWORDS.get(sha256(form.get('password') || '').toString('hex'));
      if (!app) return sendJson(res, 404, { error: 'no such app password' });
      app.revoked = true;
      return sendJson(res, 200, {});
    }
    const key = statsKey(pathname);
    stats[key] = (stats[key] || 0) + 1;
    if (pathname.startsWith('/interaction/')) {
      return await handleInteraction(req, res, pathname);
    }
    return providerCallback(req, res);
  } catch (err) {
    console.error(err);
    if (!res.headersSent) sendHtml(res, 500, 'internal error');
    else res.end();
    return undefined;
  }
});

provider.on('server_error', (_ctx, err) => console.error('server_error', err));

server.listen(PORT, '127.0.0.1', () => {
  const kids = jwks.keys.map((k) => `${k.kid || '?'}(${defaultAlgForJwk(k) || k.kty})`).join(',');
  console.log(`test idp listening issuer=${ISSUER} keys=${kids} jwt_alg=${JWT_ALG} id_token_alg=${ID_TOKEN_ALG} access_token_ttl=${ACCESS_TOKEN_TTL}`);
});

function shutdown() {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

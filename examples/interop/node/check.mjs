// tokend's --oauth-http through stock Node OAuth clients, each with its
// defaults: only what http:// on loopback needs is switched on. Reads the
// description of a running tokend from stdin (cmd/tokend/interop_test.go
// writes it) and prints one JSON line per check:
// {"lib": ..., "check": ..., "ok": true|false, "detail": ...}.
// Exits 1 if any check failed.
//
// stdin:
//   issuer           --issuer of the tokend
//   resource         the audience access tokens carry when none is asked for
//   issue_url        POST {"client_id", "dpop_jkt"?} issues a new family over
//                    NATS, bound to the DPoP key of dpop_jkt if given, and
//                    answers tokend's issue reply (refresh_token, access_token)
//   clients          basic, post, ed25519, es256, public, receiver (an SSF
//                    receiver), dpop (a public client whose families are
//                    DPoP-bound and whose proofs need tokend's nonce):
//                    {client_id, auth_method, client_secret?, private_jwk?}
//   resource_server  the client that introspects, in the same shape
import * as oauth from 'oauth4webapi'
import * as client from 'openid-client'
import * as jose from 'jose'

// The introspection checks run this many rounds at once, each introspecting
// right after its own write: a read model that lags behind writes shows
// under such load, seldom with one request at a time.
const ROUNDS = 16

const env = JSON.parse(await new Response(process.stdin).text())
const insecure = { [oauth.allowInsecureRequests]: true }
let failed = false

async function check(lib, name, fn) {
  let line
  try {
    line = { lib, check: name, ok: true, detail: (await fn()) ?? '' }
  } catch (err) {
    failed = true
    line = { lib, check: name, ok: false, detail: describe(err) }
  }
  console.log(JSON.stringify(line, redact))
}

// describe keeps what a library's error says about the response it refused.
function describe(err) {
  if (!(err instanceof Error)) return err
  const out = { message: `${err.name}: ${err.message}` }
  for (const k of ['code', 'status', 'error', 'error_description']) {
    if (err[k] !== undefined) out[k] = err[k]
  }
  if (err.cause instanceof Response) out.cause = { status: err.cause.status }
  else if (err.cause !== undefined) out.cause = describe(err.cause)
  return out
}

// redact keeps tokens, secrets and keys out of the output.
function redact(key, value) {
  return typeof value === 'string' && /token$|secret|assertion|^d$/.test(key) ? '[redacted]' : value
}

function fail(message) {
  throw new Error(message)
}

async function issue(c, dpopJKT) {
  const res = await fetch(env.issue_url, { method: 'POST', body: JSON.stringify({ client_id: c.client_id, dpop_jkt: dpopJKT }) })
  if (!res.ok) fail(`issue hook: ${res.status} ${await res.text()}`)
  return res.json()
}

async function waitFor(what, cond) {
  for (const deadline = Date.now() + 5000; Date.now() < deadline; ) {
    if (await cond()) return
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  fail(`timed out waiting until ${what}`)
}

// --- oauth4webapi ----------------------------------------------------------

const o4 = 'oauth4webapi'
const bareIssuer = env.issuer.replace(/\/$/, '')
const discovered = {}

async function discover(issuer) {
  const url = new URL(issuer)
  const res = await oauth.discoveryRequest(url, { algorithm: 'oauth2', ...insecure })
  return oauth.processDiscoveryResponse(url, res)
}

for (const [name, issuer] of [['without-trailing-slash', bareIssuer], ['with-trailing-slash', bareIssuer + '/']]) {
  await check(o4, `discovery/${name}`, async () => {
    discovered[issuer] = await discover(issuer)
    return `${issuer}: metadata issuer ${discovered[issuer].issuer}`
  })
}
const as = discovered[env.issuer] ?? fail('discovery of the configured issuer failed: nothing else can run')

// The private keys as a Node service holds them: non-extractable CryptoKeys.
for (const c of Object.values(env.clients)) {
  if (!c.private_jwk) continue
  const alg = c.private_jwk.kty === 'OKP' ? { name: c.private_jwk.crv } : { name: 'ECDSA', namedCurve: c.private_jwk.crv }
  c.key = { key: await crypto.subtle.importKey('jwk', c.private_jwk, alg, false, ['sign']), kid: c.private_jwk.kid }
}

// auth is the oauth4webapi client authentication for c's registered method.
function auth(c, method = c.auth_method, options) {
  switch (method) {
    case 'client_secret_basic':
      return oauth.ClientSecretBasic(c.client_secret)
    case 'client_secret_post':
      return oauth.ClientSecretPost(c.client_secret)
    case 'private_key_jwt':
      return oauth.PrivateKeyJwt(c.key, options)
    case 'none':
      return oauth.None()
  }
  fail(`no client authentication for ${method}`)
}

async function refresh(c, refreshToken, clientAuth = auth(c)) {
  const res = await oauth.refreshTokenGrantRequest(as, { client_id: c.client_id }, clientAuth, refreshToken, insecure)
  return oauth.processRefreshTokenResponse(as, { client_id: c.client_id }, res)
}

async function revoke(c, token) {
  const res = await oauth.revocationRequest(as, { client_id: c.client_id }, auth(c), token, insecure)
  return oauth.processRevocationResponse(res)
}

// introspect asks as client by: the token's own client for a refresh token,
// the resource server of its audience for an access token.
async function introspect(token, by = env.resource_server) {
  const res = await oauth.introspectionRequest(as, { client_id: by.client_id }, auth(by), token, insecure)
  return oauth.processIntrospectionResponse(as, { client_id: by.client_id }, res)
}

// rotates presents a new family's token and checks what the library
// accepted: a new refresh token and a bearer access token.
async function rotates(c, clientAuth) {
  const family = await issue(c)
  const t = await refresh(c, family.refresh_token, clientAuth)
  if (!t.refresh_token || t.refresh_token === family.refresh_token) fail('no new refresh token')
  return `token_type ${t.token_type}, expires_in ${t.expires_in}, scope ${t.scope}`
}

// failsWith runs fn, which must be refused with an RFC 6749 section 5.2
// error as the library reports it.
async function failsWith(code, status, fn) {
  try {
    await fn()
  } catch (err) {
    if (err instanceof oauth.ResponseBodyError && err.error === code && err.status === status) return `${status} ${code}`
    throw new Error(`want ${status} ${code} as the library's ResponseBodyError`, { cause: err })
  }
  fail(`succeeded, want ${status} ${code}`)
}

// failsAsClient runs fn, which must be refused as invalid_client with 401;
// a client that sent HTTP Basic must get a Basic challenge (RFC 6749 5.2).
async function failsAsClient(basic, fn) {
  try {
    await fn()
  } catch (err) {
    const challenge = err instanceof oauth.WWWAuthenticateChallengeError ? err.cause[0] : undefined
    const body = err instanceof oauth.WWWAuthenticateChallengeError ? await err.response.json() : { error: err.error }
    if (err.status === 401 && body.error === 'invalid_client' && (!basic || challenge?.scheme === 'basic')) {
      return `401 invalid_client${challenge ? `, challenge ${challenge.scheme}` : ''}`
    }
    throw new Error(`want 401 invalid_client${basic ? ' with a Basic challenge' : ''}`, { cause: err })
  }
  fail('succeeded with a wrong secret')
}

const { basic, post, ed25519, es256, public: pub, receiver, dpop } = env.clients

await check(o4, 'refresh/client_secret_basic', () => rotates(basic))
await check(o4, 'refresh/client_secret_post', () => rotates(post))
// RFC 6749 section 2.3.1: the server MUST support HTTP Basic for clients
// with a password, whichever method they registered.
await check(o4, 'refresh/basic-for-post-client', () => rotates(post, auth(post, 'client_secret_basic')))
await check(o4, 'refresh/none-public-client', () => rotates(pub))
// The assertion as oauth4webapi signs it; modifyAssertion only reads alg.
for (const [key, c] of [['Ed25519', ed25519], ['ES256', es256]]) {
  await check(o4, `refresh/private_key_jwt-${key}`, async () => {
    let alg
    const sign = auth(c, 'private_key_jwt', { [oauth.modifyAssertion]: (header) => (alg = header.alg) })
    const detail = await rotates(c, sign).catch((err) => {
      const advertised = as.token_endpoint_auth_signing_alg_values_supported
      throw new Error(`assertion alg ${alg}; the metadata advertises ${advertised}`, { cause: err })
    })
    return `assertion alg ${alg}; ${detail}`
  })
}

await check(o4, 'refresh/retry-same-child', async () => {
  const family = await issue(basic)
  const child = await refresh(basic, family.refresh_token)
  const again = await refresh(basic, family.refresh_token)
  if (again.refresh_token !== child.refresh_token) fail('the parent presented again inside the reuse interval got another child')
  return 'the same child'
})

await check(o4, 'access-token/validateJwtAccessToken', async () => {
  const t = await refresh(basic, (await issue(basic)).refresh_token)
  const request = new Request(env.resource, { headers: { authorization: `Bearer ${t.access_token}` } })
  const claims = await oauth.validateJwtAccessToken(as, request, env.resource, insecure)
  return `iss ${claims.iss}, aud ${claims.aud}`
})

await check(o4, 'revocation/client_secret_basic', async () => {
  const family = await issue(basic)
  await revoke(basic, family.refresh_token)
  return `then refresh: ${await failsWith('invalid_grant', 400, () => refresh(basic, family.refresh_token))}`
})

// rounds runs fn ROUNDS times at once; fn answers what was wrong, if
// anything.
async function rounds(fn) {
  const wrong = (await Promise.all(Array.from({ length: ROUNDS }, fn))).filter(Boolean)
  const counts = new Map()
  for (const what of wrong) counts.set(what, (counts.get(what) ?? 0) + 1)
  const summary = [...counts].map(([what, n]) => `${n}x ${what}`).join('; ')
  if (wrong.length) fail(`${wrong.length} of ${ROUNDS} rounds wrong: ${summary}`)
  return `${ROUNDS} rounds`
}

await check(o4, 'introspection/after-rotation', () =>
  rounds(async () => {
    const family = await issue(basic)
    const child = await refresh(basic, family.refresh_token)
    const [parent, current] = [await introspect(family.refresh_token, basic), await introspect(child.refresh_token, basic)]
    if (parent.active || !current.active) return `parent active ${parent.active}, child active ${current.active}`
  }),
)

await check(o4, 'introspection/after-revocation', () =>
  rounds(async () => {
    const family = await issue(basic)
    // Only the revocation may make it inactive, not a family not yet known.
    await waitFor('the access token is active', async () => (await introspect(family.access_token)).active)
    await revoke(basic, family.refresh_token)
    const access = await introspect(family.access_token)
    if (access.active) return 'access token active after its family was revoked'
  }),
)

await check(o4, 'introspection/after-issue', () =>
  rounds(async () => {
    const family = await issue(basic)
    const [refreshToken, access] = [await introspect(family.refresh_token, basic), await introspect(family.access_token)]
    if (!refreshToken.active || !access.active) return `refresh token active ${refreshToken.active}, access token active ${access.active}`
  }),
)

// A refresh token is its own client's business: the resource server sees
// it inactive, as it would a token that does not exist.
await check(o4, 'introspection/refresh-token-hidden-from-resource-server', async () => {
  const family = await issue(basic)
  if (!(await introspect(family.refresh_token, basic)).active) fail('the owner sees its refresh token inactive')
  if ((await introspect(family.refresh_token)).active) fail('the resource server sees another client\'s refresh token active')
  return 'inactive to the resource server, active to its client'
})

// RFC 7662 section 2.2: token_type is a type of RFC 6749 section 7.1.
await check(o4, 'introspection/access-token-type', async () => {
  const t = await refresh(basic, (await issue(basic)).refresh_token)
  let answer
  await waitFor('the access token is active', async () => (answer = await introspect(t.access_token)).active)
  if (answer.token_type?.toLowerCase() !== 'bearer') fail(`token_type ${JSON.stringify(answer.token_type)}, want Bearer`)
  return `token_type ${answer.token_type}`
})

// A grandparent is a replay at any time, inside the reuse interval too.
async function replayed(refreshWith) {
  const family = await issue(basic)
  const child = await refreshWith(family.refresh_token)
  await refreshWith(child.refresh_token)
  return failsWith('invalid_grant', 400, () => refreshWith(family.refresh_token))
}

// RFC 6749 section 4.4: an SSF receiver's access token, asking for no
// scope (tokend grants both SSF scopes), checked as RFC 9068 says.
await check(o4, 'client-credentials/ssf-receiver', async () => {
  const res = await oauth.clientCredentialsGrantRequest(as, { client_id: receiver.client_id }, auth(receiver), {}, insecure)
  const t = await oauth.processClientCredentialsResponse(as, { client_id: receiver.client_id }, res)
  if (t.refresh_token !== undefined) fail('a refresh token with client_credentials (RFC 6749 section 4.4.3)')
  if (t.token_type !== 'bearer' || t.scope !== 'ssf.read ssf.manage') fail(`token_type ${t.token_type}, scope ${t.scope}`)
  const { payload } = await jose.jwtVerify(t.access_token, jose.createRemoteJWKSet(new URL(as.jwks_uri)), {
    typ: 'at+jwt',
    issuer: as.issuer,
    audience: as.issuer,
    subject: receiver.client_id,
  })
  if (payload.client_id !== receiver.client_id || 'sid' in payload) fail(`claims ${JSON.stringify(payload)}`)
  return `token_type ${t.token_type}, expires_in ${t.expires_in}, scope ${t.scope}, aud ${payload.aud}`
})

await check(o4, 'error/invalid_grant-replay', () => replayed((rt) => refresh(basic, rt)))
await check(o4, 'error/invalid_client-wrong-secret', async () => {
  const family = await issue(basic)
  return failsAsClient(true, () => refresh(basic, family.refresh_token, oauth.ClientSecretBasic(basic.client_secret + 'x')))
})

// --- oauth4webapi: DPoP (RFC 9449) -----------------------------------------

// refreshDPoP refreshes with a proof by DPoP's key, retrying once when the
// server asks for a nonce, as oauth4webapi's documentation does; it answers
// the token and whether it had to retry.
async function refreshDPoP(c, refreshToken, DPoP) {
  const once = async () => {
    const res = await oauth.refreshTokenGrantRequest(as, { client_id: c.client_id }, auth(c), refreshToken, { ...insecure, DPoP })
    return oauth.processRefreshTokenResponse(as, { client_id: c.client_id }, res)
  }
  try {
    return { token: await once(), retried: false }
  } catch (err) {
    if (!oauth.isDPoPNonceError(err)) throw err
    return { token: await once(), retried: true }
  }
}

// dpopKey is a key pair as oauth4webapi makes it, its handle and its
// thumbprint, which jose must compute alike (RFC 7638).
async function dpopKey(alg, options) {
  const keyPair = await oauth.generateKeyPair(alg)
  const DPoP = oauth.DPoP({ client_id: dpop.client_id }, keyPair, options)
  const jkt = await DPoP.calculateThumbprint()
  const joseJKT = await jose.calculateJwkThumbprint(await jose.exportJWK(keyPair.publicKey))
  if (joseJKT !== jkt) fail(`thumbprint ${jkt} by oauth4webapi, ${joseJKT} by jose`)
  return { DPoP, jkt }
}

// resourceServer is a protected resource that checks its requests with
// oauth4webapi's validateJwtAccessToken, DPoP required: the access token
// against the issuer's JWKS, the proof (htm, htu, iat, ath) and cnf.jkt
// against the proof's key.
async function resourceServer() {
  const { createServer } = await import('node:http')
  const server = createServer(async (req, res) => {
    const request = new Request(`http://${req.headers.host}${req.url}`, { method: req.method, headers: req.headers })
    try {
      const claims = await oauth.validateJwtAccessToken(as, request, env.resource, { ...insecure, requireDPoP: true })
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ jkt: claims.cnf.jkt }))
    } catch (err) {
      res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify(describe(err)))
    }
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { url: new URL(`http://127.0.0.1:${server.address().port}/items?page=1`), close: () => server.close() }
}

// The nonce round trip happens once: the first proof has no nonce and is
// refused with use_dpop_nonce; the retry carries the nonce of the refusal,
// and later refreshes the nonce of the previous reply. Every access token
// is a DPoP token bound to the key, and a resource accepts it with a proof.
// oauth4webapi signs with an Ed25519 key as alg Ed25519 (RFC 9864) unless
// told to write the older EdDSA, as its documentation shows.
const asEdDSA = {
  [oauth.modifyAssertion]: (header) => {
    if (header.alg === 'Ed25519') header.alg = 'EdDSA'
  },
}
for (const [name, alg, options] of [
  ['ES256', 'ES256'],
  ['Ed25519', 'Ed25519'],
  ['Ed25519-as-EdDSA', 'Ed25519', asEdDSA],
]) {
  await check(o4, `dpop/refresh-bound-family-${name}`, async () => {
    const { DPoP, jkt } = await dpopKey(alg, options)
    const rs = await resourceServer()
    try {
      let refreshToken = (await issue(dpop, jkt)).refresh_token
      const retried = []
      for (let i = 0; i < 3; i++) {
        const { token, retried: again } = await refreshDPoP(dpop, refreshToken, DPoP)
        if (token.token_type !== 'dpop') fail(`refresh ${i}: token_type ${token.token_type}`)
        const { cnf } = jose.decodeJwt(token.access_token)
        if (cnf?.jkt !== jkt) fail(`refresh ${i}: cnf ${JSON.stringify(cnf)}, want jkt ${jkt}`)
        if (!token.refresh_token || token.refresh_token === refreshToken) fail(`refresh ${i}: no new refresh token`)
        retried.push(again)
        refreshToken = token.refresh_token
        const res = await oauth.protectedResourceRequest(token.access_token, 'GET', rs.url, undefined, undefined, { ...insecure, DPoP })
        if (res.status !== 200) fail(`refresh ${i}: the resource refused the token and its proof: ${await res.text()}`)
      }
      if (retried.join() !== 'true,false,false') fail(`nonce retries ${retried}, want only the first refresh to need one`)
      return `token_type dpop, cnf.jkt the key's, resource accepted; nonce retries ${retried}`
    } finally {
      rs.close()
    }
  })
}

// A stolen refresh token presented with another key revokes its family.
await check(o4, 'dpop/stolen-refresh-token-other-key', async () => {
  const owner = await dpopKey('ES256')
  const thief = await dpopKey('ES256')
  const family = await issue(dpop, owner.jkt)
  const { token } = await refreshDPoP(dpop, family.refresh_token, owner.DPoP)
  const stolen = await failsWith('invalid_grant', 400, () => refreshDPoP(dpop, token.refresh_token, thief.DPoP))
  const after = await failsWith('invalid_grant', 400, () => refreshDPoP(dpop, token.refresh_token, owner.DPoP))
  return `the thief: ${stolen}; then the owner: ${after}`
})

// A bound family refreshed without a proof.
await check(o4, 'dpop/bound-family-without-proof', async () => {
  const { jkt } = await dpopKey('ES256')
  const family = await issue(dpop, jkt)
  return failsWith('invalid_dpop_proof', 400, () => refresh(dpop, family.refresh_token))
})

// --- openid-client ---------------------------------------------------------

const oc = 'openid-client'

// configure discovers the server for c; without clientAuth openid-client
// picks its default (client_secret_post when there is a secret).
function configure(c, clientAuth, issuer = env.issuer) {
  return client.discovery(new URL(issuer), c.client_id, c.client_secret, clientAuth, {
    algorithm: 'oauth2',
    execute: [client.allowInsecureRequests],
  })
}

for (const [name, issuer] of [['without-trailing-slash', bareIssuer], ['with-trailing-slash', bareIssuer + '/']]) {
  await check(oc, `discovery/${name}`, async () => {
    const config = await configure(post, undefined, issuer)
    return `${issuer}: metadata issuer ${config.serverMetadata().issuer}`
  })
}

async function rotatesWith(c, clientAuth) {
  const config = await configure(c, clientAuth)
  const family = await issue(c)
  const t = await client.refreshTokenGrant(config, family.refresh_token)
  if (!t.refresh_token || t.refresh_token === family.refresh_token) fail('no new refresh token')
  return `token_type ${t.token_type}, expires_in ${t.expires_in}`
}

await check(oc, 'refresh/default-auth-post-client', () => rotatesWith(post))
await check(oc, 'refresh/client_secret_basic', () => rotatesWith(basic, client.ClientSecretBasic(basic.client_secret)))
await check(oc, 'refresh/basic-for-post-client', () => rotatesWith(post, client.ClientSecretBasic(post.client_secret)))

await check(oc, 'revocation/default-auth-post-client', async () => {
  const config = await configure(post)
  const family = await issue(post)
  await client.tokenRevocation(config, family.refresh_token)
  return `then refresh: ${await failsWith('invalid_grant', 400, () => client.refreshTokenGrant(config, family.refresh_token))}`
})

await check(oc, 'error/invalid_grant-replay', async () => {
  const config = await configure(basic, client.ClientSecretBasic(basic.client_secret))
  return replayed((rt) => client.refreshTokenGrant(config, rt))
})
await check(oc, 'error/invalid_client-wrong-secret', async () => {
  const config = await configure({ ...post, client_secret: post.client_secret + 'x' })
  const family = await issue(post)
  return failsAsClient(false, () => client.refreshTokenGrant(config, family.refresh_token))
})

// --- jose ------------------------------------------------------------------

// RFC 9068 with a general JWT library: the keys from jwks_uri, typ at+jwt,
// the issuer from the metadata, the audience of the resource.
await check('jose', 'access-token/jwtVerify', async () => {
  const t = await refresh(basic, (await issue(basic)).refresh_token)
  const jwks = jose.createRemoteJWKSet(new URL(as.jwks_uri))
  const { payload, protectedHeader } = await jose.jwtVerify(t.access_token, jwks, {
    typ: 'at+jwt',
    issuer: as.issuer,
    audience: env.resource,
  })
  return `alg ${protectedHeader.alg}, iss ${payload.iss}, aud ${payload.aud}`
})

process.exitCode = failed ? 1 : 0

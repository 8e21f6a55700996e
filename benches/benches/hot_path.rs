//! Criterion microbenchmarks of the engine's per-login path (issue 5):
//!   cache_hit/*        Engine::verify with a warm cache (userinfo settings; the stub is never asked)
//!   provider/*         Engine::verify with the cache off against the loopback idp-stub (one keep-alive
//!                      HTTP request per call): userinfo and RFC 7662 introspection
//!   jwt_parse          jwt::shape (split, base64url, JSON) of an RS256 access token
//!   jwt_verify/ALG     Engine::verify, introspection_mode = local, cache off: parse + key choice +
//!                      signature + claim rules, per algorithm
//!   signature_only/ALG jsonwebtoken::crypto::verify alone, per algorithm
//! Run: cd benches && cargo bench --bench hot_path
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dovecot_oauth2::Verdict;
use dovecot_oauth2_benches::{bench_user, engine, unix_now, SigningKey, StubProcess};
use std::path::Path;

const ISS: &str = "https://idp.bench.test";
const AUD: &str = "urn:dovecot";
const ALGS: [&str; 6] = ["RS256", "PS256", "RS512", "ES256", "ES384", "EdDSA"];

fn benches(c: &mut Criterion) {
    let keys: Vec<SigningKey> = ALGS.iter().map(|a| SigningKey::generate(a)).collect();
    let now = unix_now();
    let user = bench_user(1);
    let opaque = "bt_0000001_0123456789abcdef0123456789abcdef".to_string();
    let jwts: Vec<String> = keys.iter().map(|k| k.mint(ISS, AUD, &user, 1, now, 7200)).collect();
    let tokens = vec![(user.clone(), opaque.clone())];
    let key_refs: Vec<&SigningKey> = keys.iter().collect();
    let stub = StubProcess::start(Path::new(env!("CARGO_BIN_EXE_idp-stub")), &tokens, &key_refs);

    let accept = |v: &Verdict| assert!(matches!(v, Verdict::Accept(_)), "{v:?}");

    let warm = engine(&format!("introspection_url = {}\n", stub.url("/userinfo")));
    accept(&warm.verify(&user, opaque.as_bytes()).verdict);
    c.bench_function("cache_hit/userinfo", |b| {
        b.iter(|| black_box(warm.verify(black_box(&user), black_box(opaque.as_bytes()))))
    });
    let warm_jwt = engine(&format!(
        "introspection_mode = local\njwks_url = {}={ISS}\nissuers = {ISS}\naudience = {AUD}\n",
        stub.url("/jwks")
    ));
    accept(&warm_jwt.verify(&user, jwts[0].as_bytes()).verdict);
    c.bench_function("cache_hit/local_jwt_rs256", |b| b.iter(|| black_box(warm_jwt.verify(&user, jwts[0].as_bytes()))));

    let ui = engine(&format!("introspection_url = {}\ncache_ttl_secs = 0\n", stub.url("/userinfo")));
    accept(&ui.verify(&user, opaque.as_bytes()).verdict);
    c.bench_function("provider/userinfo_no_cache", |b| b.iter(|| black_box(ui.verify(&user, opaque.as_bytes()))));
    let intro = engine(&format!(
        "introspection_url = {}\nintrospection_mode = post\ncache_ttl_secs = 0\n",
        stub.url("/introspect")
    ));
    accept(&intro.verify(&user, opaque.as_bytes()).verdict);
    c.bench_function("provider/introspection_no_cache", |b| {
        b.iter(|| black_box(intro.verify(&user, opaque.as_bytes())))
    });

    c.bench_function("jwt_parse/rs256", |b| {
        b.iter(|| {
            black_box(matches!(dovecot_oauth2::jwt::shape(black_box(&jwts[0])), dovecot_oauth2::jwt::Shape::Jwt(Ok(_))))
        })
    });

    let local = engine(&format!(
        "introspection_mode = local\njwks_url = {}={ISS}\nissuers = {ISS}\naudience = {AUD}\ncache_ttl_secs = 0\n",
        stub.url("/jwks")
    ));
    let mut g = c.benchmark_group("jwt_verify");
    for (alg, tok) in ALGS.iter().zip(&jwts) {
        accept(&local.verify(&user, tok.as_bytes()).verdict);
        g.bench_function(*alg, |b| b.iter(|| black_box(local.verify(&user, tok.as_bytes()))));
    }
    g.finish();

    let mut g = c.benchmark_group("signature_only");
    for ((alg, tok), k) in ALGS.iter().zip(&jwts).zip(&keys) {
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(k.jwk.clone()).unwrap();
        let dk = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let (signed, sig) = tok.rsplit_once('.').unwrap();
        assert!(jsonwebtoken::crypto::verify(sig, signed.as_bytes(), &dk, k.alg).unwrap());
        g.bench_function(*alg, |b| {
            b.iter(|| black_box(jsonwebtoken::crypto::verify(sig, signed.as_bytes(), &dk, k.alg)))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
}

criterion_group! { name = hot_path; config = config(); targets = benches }
criterion_main!(hot_path);

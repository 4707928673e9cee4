//! Who may do what: API tokens, OIDC JWTs, ownership, quotas and the policy at restart, through
//! the real server role (built as `rucat server` builds it) on a real SQLite store.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::common::jwt::{self, claims, sign, AUDIENCE, ISSUER};
use crate::common::{spawn_configured, TestApp, VERSION};
use reqwest::{Method, StatusCode};
use rucat::auth::token::{self, TokenEntry, TokenHash};
use rucat::auth::Role;
use rucat::engine::{EngineId, EngineState};
use rucat_client::Actor;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

/// A new token and its configuration entry.
fn new_token(user: &str, role: Role) -> (String, TokenEntry) {
    let (secret, hash) = token::generate().expect("random");
    let entry = TokenEntry {
        user: user.into(),
        role,
        hash,
    };
    (secret.expose_secret().to_owned(), entry)
}

struct Users {
    alice: String,
    bob: String,
    root: String,
}

/// `[auth]` with tokens for alice and bob (users) and root (admin), and `[auth.jwt]` with the
/// tests' issuer (JWKS in a file under `dir`); plus `extra` TOML.
fn config(dir: &Path, extra: &str) -> (String, Users) {
    let (alice, a) = new_token("alice", Role::User);
    let (bob, b) = new_token("bob", Role::User);
    let (root, r) = new_token("root", Role::Admin);
    let issuer = jwt::issuer();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, jwt::jwks(&[&issuer.rsa, &issuer.ec])).expect("write jwks");
    let tokens: String = [a, b, r]
        .iter()
        .map(|e| token::entry_toml(e, "auth.tokens"))
        .collect();
    let text = format!(
        "{extra}\n[auth]\nreload_interval_ms = 100\n{tokens}\n\
         [auth.jwt]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_file = {jwks:?}\n\
         admin_claim = \"groups\"\nadmin_value = \"rucat-admins\"\nleeway_secs = 30\n"
    );
    (text, Users { alice, bob, root })
}

async fn app_with(extra: &str) -> (TestApp, Users, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let (text, users) = config(dir.path(), extra);
    (spawn_configured(&text).await, users, dir)
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = app.http.request(method, app.url(path));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn spark(name: &str) -> Value {
    json!({"name": name, "engine_type": "Spark", "version": VERSION})
}

async fn create(app: &TestApp, token: &str, name: &str) -> String {
    let (status, _, body) = call(
        app,
        Method::POST,
        "/engines",
        Some(&bearer(token)),
        Some(&spark(name)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("id").to_owned()
}

/// Everything the store holds, to compare before and after refused requests.
async fn snapshot(app: &TestApp) -> Vec<Value> {
    let mut out = Vec::new();
    for (id, _, _) in app.store.all_states().await.expect("states") {
        let engine = app.store.get(&id).await.expect("get").expect("engine");
        let events = app.store.events(&id).await.expect("events");
        out.push(json!({"engine": engine, "events": events}));
    }
    out
}

fn assert_error(body: &Value, code: &str) -> String {
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {body}"))
        .to_owned()
}

/// Every route but `/healthz`, `/readyz` and the web console's files (`/ui`), with a valid engine id
/// in it.
fn routes(id: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::POST, "/engines".into(), Some(spark("new"))),
        (Method::GET, "/engines".into(), None),
        (Method::GET, format!("/engines/{id}"), None),
        (Method::POST, format!("/engines/{id}/stop"), None),
        (Method::POST, format!("/engines/{id}/restart"), None),
        (Method::DELETE, format!("/engines/{id}"), None),
        (Method::GET, format!("/engines/{id}/logs"), None),
        (Method::GET, format!("/engines/{id}/events"), None),
        (Method::GET, "/versions".into(), None),
        (Method::GET, "/me".into(), None),
    ]
}

#[tokio::test]
async fn every_route_refuses_missing_malformed_unknown_and_invalid_credentials() {
    let (app, users, _dir) = app_with("").await;
    let id = create(&app, &users.alice, "owned").await;
    let before = snapshot(&app).await;

    let issuer = jwt::issuer();
    let other_key = jwt::rsa_key(&issuer.rsa.kid); // same kid, other key: a forged signature
    let (unknown, _) = new_token("nobody", Role::Admin);
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims("alice", json!({})),
        &jsonwebtoken::EncodingKey::from_secret(b"guessable"),
    )
    .expect("hs256");
    let credentials: Vec<(&str, Option<String>, &str)> = vec![
        ("no header", None, "authentication required"),
        ("basic", Some("Basic YWxpY2U6cHc=".into()), "Bearer"),
        ("empty bearer", Some("Bearer ".into()), "token"),
        ("unknown token", Some(bearer(&unknown)), "unknown API token"),
        (
            "expired JWT",
            Some(bearer(&sign(
                &issuer.rsa,
                &claims("alice", json!({"exp": jwt::now() - 3600})),
            ))),
            "expired",
        ),
        (
            "wrong audience",
            Some(bearer(&sign(
                &issuer.ec,
                &claims("alice", json!({"aud": "someone-else"})),
            ))),
            "wrong audience",
        ),
        (
            "wrong issuer",
            Some(bearer(&sign(
                &issuer.rsa,
                &claims("alice", json!({"iss": "https://evil.test"})),
            ))),
            "wrong issuer",
        ),
        (
            "forged signature",
            Some(bearer(&sign(&other_key, &claims("alice", json!({}))))),
            "bad signature",
        ),
        ("HS256", Some(bearer(&hs256)), "algorithm"),
        ("not a JWT", Some(bearer("a.b.c")), "not a JWT"),
    ];
    for (method, path, body) in routes(&id) {
        for (what, credential, says) in &credentials {
            let (status, headers, answer) = call(
                &app,
                method.clone(),
                &path,
                credential.as_deref(),
                body.as_ref(),
            )
            .await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{what} on {method} {path}: {answer}"
            );
            let message = assert_error(&answer, "unauthenticated");
            assert!(message.contains(says), "{what}: {message:?} lacks {says:?}");
            let challenge = headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(challenge.starts_with("Bearer"), "{what}: {challenge:?}");
            if let Some(credential) = credential {
                let token = credential.trim_start_matches("Bearer ");
                assert!(
                    token.len() < 8 || !answer.to_string().contains(token),
                    "{what}: the answer echoes the credential"
                );
            }
        }
    }
    assert_eq!(
        snapshot(&app).await,
        before,
        "refused requests changed nothing"
    );

    // The web console's page holds no data: its script calls the routes above with a token.
    for open in ["/healthz", "/readyz", "/ui", "/ui/"] {
        let (status, _, _) = call(&app, Method::GET, open, None, None).await;
        assert_eq!(status, StatusCode::OK, "{open} needs no credential");
    }
}

#[tokio::test]
async fn users_see_and_act_on_their_own_engines_only_and_admins_on_all() {
    let (app, users, _dir) = app_with("").await;
    let a = create(&app, &users.alice, "alices").await;
    let b = create(&app, &users.bob, "bobs").await;
    let before = snapshot(&app).await;

    // Another user's engine is answered exactly as an unknown id.
    let unknown = EngineId::generate().to_string();
    // (The routes of one engine: those with its id in the path.)
    for (method, path, body) in routes(&unknown)
        .into_iter()
        .filter(|(_, path, _)| path.contains(&unknown))
    {
        let (status, _, unknown_answer) = call(
            &app,
            method.clone(),
            &path,
            Some(&bearer(&users.bob)),
            body.as_ref(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        let theirs = path.replace(&unknown, &a);
        let (status, _, answer) = call(
            &app,
            method.clone(),
            &theirs,
            Some(&bearer(&users.bob)),
            body.as_ref(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {theirs}: {answer}");
        let expected: Value =
            serde_json::from_str(&unknown_answer.to_string().replace(&unknown, &a)).expect("json");
        assert_eq!(answer, expected, "{method} {theirs}");
    }
    assert_eq!(
        snapshot(&app).await,
        before,
        "bob changed nothing of alice's"
    );

    let listed = |token: &str, query: &str| {
        let (app, token, query) = (&app, token.to_owned(), query.to_owned());
        async move {
            let (status, _, body) = call(
                app,
                Method::GET,
                &format!("/engines{query}"),
                Some(&bearer(&token)),
                None,
            )
            .await;
            let ids: Vec<String> = body["engines"]
                .as_array()
                .map(|engines| {
                    engines
                        .iter()
                        .filter_map(|e| e["id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            (status, ids, body)
        }
    };
    assert_eq!(listed(&users.alice, "").await.1, vec![a.clone()]);
    assert_eq!(listed(&users.bob, "").await.1, vec![b.clone()]);
    assert_eq!(listed(&users.bob, "?owner=bob").await.1, vec![b.clone()]);
    assert_eq!(listed(&users.root, "").await.1, vec![a.clone(), b.clone()]);
    assert_eq!(listed(&users.root, "?owner=alice").await.1, vec![a.clone()]);
    let (status, _, body) = listed(&users.bob, "?owner=alice").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(assert_error(&body, "forbidden").contains("admin"));

    // The admin acts on alice's engine; the history says who did what.
    let (status, _, body) = call(
        &app,
        Method::POST,
        &format!("/engines/{a}/stop"),
        Some(&bearer(&users.root)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let events = app
        .client_as(&users.alice)
        .events(&a)
        .await
        .expect("alice reads her events");
    let actors: Vec<Option<Actor>> = events.iter().map(|e| e.actor.clone()).collect();
    assert_eq!(
        actors,
        vec![
            Some(Actor::User("alice".into())),
            Some(Actor::User("root".into()))
        ]
    );
    assert_eq!(events[1].message.as_deref(), Some("stop requested by root"));

    // JWT users: RS256 and ES256 tokens of one subject are one user; a group makes an admin.
    let issuer = jwt::issuer();
    let carol_rs = sign(&issuer.rsa, &claims("carol", json!({})));
    let carol_es = sign(
        &issuer.ec,
        &claims("carol", json!({"groups": ["analysts"]})),
    );
    let c = create(&app, &carol_rs, "carols").await;
    let engine = app.client_as(&carol_es).get(&c).await.expect("carol's");
    assert_eq!(engine.owner, "carol");
    assert_eq!(listed(&carol_es, "").await.1, vec![c.clone()]);
    let dave = sign(
        &issuer.ec,
        &claims("dave", json!({"groups": ["analysts", "rucat-admins"]})),
    );
    assert_eq!(listed(&dave, "").await.1, vec![a, b, c]);
}

#[tokio::test]
async fn jwt_time_claims_and_key_rotation() {
    let (app, users, dir) = app_with("").await;
    let issuer = jwt::issuer();
    let get = |token: String| {
        let app = &app;
        async move {
            let (status, _, body) =
                call(app, Method::GET, "/engines", Some(&bearer(&token)), None).await;
            (status, body)
        }
    };
    // Within the leeway (30 s) on either side.
    let late = sign(
        &issuer.rsa,
        &claims("erin", json!({"exp": jwt::now() - 10})),
    );
    assert_eq!(get(late).await.0, StatusCode::OK);
    let early = sign(
        &issuer.rsa,
        &claims("erin", json!({"nbf": jwt::now() + 10})),
    );
    assert_eq!(get(early).await.0, StatusCode::OK);
    for (what, extra, says) in [
        (
            "not yet valid",
            json!({"nbf": jwt::now() + 600}),
            "not valid yet",
        ),
        ("no exp", json!({"exp": null}), "\"exp\""),
        ("no audience", json!({"aud": null}), "\"aud\""),
        ("no subject", json!({"sub": null}), "\"sub\""),
        ("empty subject", json!({"sub": ""}), "must not be empty"),
    ] {
        let (status, body) = get(sign(&issuer.ec, &claims("erin", extra))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert!(
            assert_error(&body, "unauthenticated").contains(says),
            "{what}: {body}"
        );
    }

    // The issuer rotates its keys: the JWKS file changes, and Rucat follows without a restart.
    let rotated = jwt::rsa_key("rsa-2");
    let new_token = sign(&rotated, &claims("erin", json!({})));
    let old_token = sign(&issuer.rsa, &claims("erin", json!({})));
    // Verified (and remembered) before the rotation.
    assert_eq!(get(old_token.clone()).await.0, StatusCode::OK);
    assert_eq!(get(new_token.clone()).await.0, StatusCode::UNAUTHORIZED);
    std::fs::write(
        dir.path().join("jwks.json"),
        jwt::jwks(&[&rotated, &issuer.ec]),
    )
    .expect("rotate");
    let status = eventually(|| get(new_token.clone()), |s| s.0 == StatusCode::OK).await;
    assert_eq!(status.0, StatusCode::OK, "the new key is taken");
    assert_eq!(
        get(old_token).await.0,
        StatusCode::UNAUTHORIZED,
        "the old key is gone"
    );
    // API tokens are untouched by all this.
    assert_eq!(get(users.alice.clone()).await.0, StatusCode::OK);
}

/// Calls `f` until `done` holds of its answer (at most 10 s); the last answer.
async fn eventually<T, F, Fut>(mut f: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = f().await;
        if done(&answer) || tokio::time::Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn keys_from_a_jwks_url_are_fetched_and_refreshed() {
    // The issuer's JWKS endpoint, on loopback; what it serves can be changed.
    let served = std::sync::Arc::new(std::sync::Mutex::new(jwt::jwks(&[&jwt::issuer().ec])));
    let state = served.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
    let router = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let state = state.clone();
            async move { state.lock().expect("lock").clone() }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });

    let app = spawn_configured(&format!(
        "[auth]\nreload_interval_ms = 100\n[auth.jwt]\nissuer = \"{ISSUER}\"\n\
         audience = \"{AUDIENCE}\"\njwks_url = \"{url}\"\nrefresh_interval_ms = 200\n"
    ))
    .await;
    let ec = sign(&jwt::issuer().ec, &claims("frank", json!({})));
    let (status, _, body) = call(&app, Method::GET, "/engines", Some(&bearer(&ec)), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let rsa = sign(&jwt::issuer().rsa, &claims("frank", json!({})));
    let status = call(&app, Method::GET, "/engines", Some(&bearer(&rsa)), None)
        .await
        .0;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    *served.lock().expect("lock") = jwt::jwks(&[&jwt::issuer().ec, &jwt::issuer().rsa]);
    let authorization = bearer(&rsa);
    let (status, _, _) = eventually(
        || call(&app, Method::GET, "/engines", Some(&authorization), None),
        |answer| answer.0 == StatusCode::OK,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the refreshed JWKS is used");
}

#[tokio::test]
async fn tokens_in_the_tokens_file_rotate_without_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("tokens.toml");
    let (first, first_entry) = new_token("grace", Role::User);
    let (second, second_entry) = new_token("heidi", Role::Admin);
    std::fs::write(&path, token::entry_toml(&first_entry, "tokens")).expect("write");
    let app = spawn_configured(&format!(
        "[auth]\ntokens_file = {path:?}\nreload_interval_ms = 100\n"
    ))
    .await;
    let status_of = |token: String| {
        let app = &app;
        async move {
            call(app, Method::GET, "/engines", Some(&bearer(&token)), None)
                .await
                .0
        }
    };
    assert_eq!(status_of(first.clone()).await, StatusCode::OK);
    assert_eq!(status_of(second.clone()).await, StatusCode::UNAUTHORIZED);

    // Added: works without a restart.
    let both = format!(
        "{}{}",
        token::entry_toml(&first_entry, "tokens"),
        token::entry_toml(&second_entry, "tokens")
    );
    std::fs::write(&path, both).expect("write");
    let got = eventually(|| status_of(second.clone()), |s| *s == StatusCode::OK).await;
    assert_eq!(got, StatusCode::OK, "the added token works");

    // Removed: refused without a restart.
    std::fs::write(&path, token::entry_toml(&second_entry, "tokens")).expect("write");
    let got = eventually(
        || status_of(first.clone()),
        |s| *s == StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(
        got,
        StatusCode::UNAUTHORIZED,
        "the removed token is refused"
    );

    // A broken file is reported and the last good tokens stay.
    std::fs::write(&path, "[[tokens]]\nuser = ").expect("write");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(status_of(second).await, StatusCode::OK);
}

#[tokio::test]
async fn quotas_refuse_creates_and_restarts_naming_the_limit() {
    let (app, users, _dir) = app_with(
        "[quota]\nmax_engines = 3\nmax_active_engines = 2\n[quota.users.bob]\nmax_active_engines = 1\n",
    )
    .await;
    create(&app, &users.alice, "one").await;
    create(&app, &users.alice, "two").await;
    let before = snapshot(&app).await;
    let (status, _, body) = call(
        &app,
        Method::POST,
        "/engines",
        Some(&bearer(&users.alice)),
        Some(&spark("three")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let message = assert_error(&body, "quota_exceeded");
    assert!(message.contains("max_active_engines is 2"), "{message}");
    assert_eq!(snapshot(&app).await, before);

    // A stopped engine counts toward max_engines, and cannot restart past max_active_engines.
    let stopped = app
        .plant_as("alice", EngineState::Terminated, VERSION, &[])
        .await;
    let before = snapshot(&app).await;
    let (status, _, body) = call(
        &app,
        Method::POST,
        "/engines",
        Some(&bearer(&users.alice)),
        Some(&spark("four")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(assert_error(&body, "quota_exceeded").contains("max_engines is 3"));
    let (status, _, body) = call(
        &app,
        Method::POST,
        &format!("/engines/{}/restart", stopped.id),
        Some(&bearer(&users.alice)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(assert_error(&body, "quota_exceeded").contains("max_active_engines is 2"));
    assert_eq!(snapshot(&app).await, before);

    // Per-user limits replace the general ones; other users are not affected by alice's.
    create(&app, &users.bob, "bobs").await;
    let (status, _, body) = call(
        &app,
        Method::POST,
        "/engines",
        Some(&bearer(&users.bob)),
        Some(&spark("bobs-second")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(assert_error(&body, "quota_exceeded").contains("max_active_engines is 1"));
    create(&app, &users.root, "roots").await;
}

#[tokio::test]
async fn a_restart_is_checked_against_todays_policy_and_versions() {
    let (app, users, _dir) = app_with("").await;
    // Engines made under an older, laxer policy and with a version no longer offered.
    let jars = app
        .plant_as(
            "alice",
            EngineState::Terminated,
            VERSION,
            &[("spark.jars.packages", "org.evil:payload:1.0")],
        )
        .await;
    let old = app
        .plant_as("alice", EngineState::Terminated, "3.0.0", &[])
        .await;
    let fine = app
        .plant_as(
            "alice",
            EngineState::Terminated,
            VERSION,
            &[("spark.sql.shuffle.partitions", "8")],
        )
        .await;
    let before = snapshot(&app).await;
    let restart = |id: String| {
        let (app, token) = (&app, users.alice.clone());
        async move {
            call(
                app,
                Method::POST,
                &format!("/engines/{id}/restart"),
                Some(&bearer(&token)),
                None,
            )
            .await
        }
    };
    let (status, _, body) = restart(jars.id.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(assert_error(&body, "config_not_allowed").contains("\"spark.jars.packages\""));
    let (status, _, body) = restart(old.id.to_string()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(assert_error(&body, "unprocessable").contains("\"3.0.0\""));
    assert_eq!(
        snapshot(&app).await,
        before,
        "refused restarts change nothing"
    );
    let (status, _, body) = restart(fine.id.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["state"], "WaitToStart");
}

#[tokio::test]
async fn code_loading_keys_are_refused_by_default_and_accepted_when_an_operator_allows_them() {
    let (strict, users, _dir) = app_with("").await;
    let exempt: Vec<String> = rucat::engine::policy::CODE_LOADING
        .iter()
        .map(|k| format!("{k:?}"))
        .collect();
    let (lax, lax_users, _lax_dir) =
        app_with(&format!("[policy]\nexempt = [{}]\n", exempt.join(", "))).await;
    for key in rucat::engine::policy::CODE_LOADING {
        let body = json!({"name": "x", "engine_type": "Spark", "version": VERSION,
                          "configs": {*key: "x"}});
        let (status, _, answer) = call(
            &strict,
            Method::POST,
            "/engines",
            Some(&bearer(&users.alice)),
            Some(&body),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key}: {answer}");
        assert!(
            assert_error(&answer, "config_not_allowed").contains(&format!("{key:?}")),
            "{answer}"
        );
        let (status, _, answer) = call(
            &lax,
            Method::POST,
            "/engines",
            Some(&bearer(&lax_users.alice)),
            Some(&body),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{key}: {answer}");
    }
    assert_eq!(strict.count().await, 0);
    // Reserved keys stay refused whatever the operator allows.
    let body = json!({"name": "x", "engine_type": "Spark", "version": VERSION,
                      "configs": {"spark.master": "yarn"}});
    let (status, _, _) = call(
        &lax,
        Method::POST,
        "/engines",
        Some(&bearer(&lax_users.alice)),
        Some(&body),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn without_authentication_only_loopback_and_with_it_any_address() {
    use rucat::app::{AppError, Application, Roles};
    use rucat::config::{FileConfig, RoleArgs, Settings};
    let dir = tempfile::tempdir().expect("dir");
    let settings = |file: FileConfig| {
        Settings::resolve(
            RoleArgs {
                listen: Some("0.0.0.0:0".into()),
                data_dir: Some(dir.path().join("data")),
                platform: Some("simulated".into()),
                ..RoleArgs::default()
            },
            file,
        )
        .expect("settings")
    };
    match Application::build(&settings(FileConfig::default()), Roles::SERVER).await {
        Err(error @ AppError::NotLoopback(_)) => {
            assert!(error
                .to_string()
                .contains("authentication is not configured"))
        }
        Err(other) => panic!("expected the loopback refusal, got {other}"),
        Ok(_) => panic!("listened beyond loopback without authentication"),
    }
    let (_, entry) = new_token("ivan", Role::Admin);
    let file: FileConfig = toml::from_str(&token::entry_toml(&entry, "auth.tokens")).expect("toml");
    let app = Application::build(&settings(file), Roles::SERVER)
        .await
        .expect("with authentication any address is fine");
    assert!(app.local_addr().expect("addr").ip().is_unspecified());

    // The data directory is private, and so is the SQLite file.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("data")), 0o700);
    assert_eq!(mode(&dir.path().join("data").join("rucat.db")), 0o600);
}

#[test]
fn configured_hashes_are_only_hashes() {
    let (token, entry) = new_token("judy", Role::User);
    let text = token::entry_toml(&entry, "tokens");
    assert!(!text.contains(&token));
    assert_eq!(TokenHash::of(&token), entry.hash);
    let map: BTreeMap<String, Vec<BTreeMap<String, String>>> = toml::from_str(&text).expect("toml");
    assert_eq!(map["tokens"][0]["hash"].len(), "sha256:".len() + 64);
}

#[tokio::test]
async fn me_names_the_caller_and_their_role() {
    let (app, users, _dir) = app_with("").await;
    for (token, expected) in [
        (&users.alice, json!({"user": "alice", "role": "user"})),
        (&users.bob, json!({"user": "bob", "role": "user"})),
        (&users.root, json!({"user": "root", "role": "admin"})),
    ] {
        let (status, _, body) = call(&app, Method::GET, "/me", Some(&bearer(token)), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, expected);
    }
    let (status, _, body) = call(&app, Method::GET, "/me", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

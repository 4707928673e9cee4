//! The web console in a real headless Chromium, driven through WebDriver (chromedriver, spoken to
//! as plain JSON over HTTP), against the real `rucat serve` with engines on the simulated
//! platform. Screenshots go to `target/ui-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::harness::{Options, Rucat, SPARK_VERSION};
use super::token_create;
use crate::common::process::{free_port, processes_matching};

/// How long the page may take to show what a test waits for.
const WAIT: Duration = Duration::from_secs(30);

/// The key WebDriver names element references by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// `RUCAT_CHROMEDRIVER`, else `chromedriver` on the PATH (Debian's `chromium-driver`).
fn chromedriver() -> PathBuf {
    if let Some(path) = std::env::var_os("RUCAT_CHROMEDRIVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("chromedriver"))
        .find(|path| path.is_file())
        .expect("no chromedriver: run scripts/setup.sh --browser (or set RUCAT_CHROMEDRIVER)")
}

/// `RUCAT_CHROMIUM`, else Debian's `/usr/bin/chromium` (else chromedriver looks for one).
fn chromium() -> Option<PathBuf> {
    std::env::var_os("RUCAT_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/bin/chromium")).filter(|p| p.is_file()))
}

fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|target| target.join("ui-screenshots"))
        .unwrap_or_else(|| PathBuf::from("ui-screenshots"))
}

/// One headless Chromium with its chromedriver, gone when dropped.
struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    driver: Child,
    profile: tempfile::TempDir,
    /// What screenshots are prefixed with.
    name: String,
}

impl Browser {
    async fn start(name: &str) -> Browser {
        let port = free_port();
        let profile = tempfile::tempdir().expect("profile dir");
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).expect("log");
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(response) = ready {
                let status: Value = response.json().await.unwrap_or_default();
                if status["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut options = json!({
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().join("chromium").display()),
            ]
        });
        if let Some(binary) = chromium() {
            options["binary"] = json!(binary);
        }
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": options,
                "goog:loggingPrefs": {"browser": "ALL"},
            }}}))
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("json");
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"))
            .to_owned();
        Browser {
            http,
            session: format!("{base}/session/{id}"),
            driver,
            profile,
            name: name.to_owned(),
        }
    }

    /// A WebDriver command: its `value`, or the WebDriver error's `error` code and message.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.session);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let answer: Value = request
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let value = answer["value"].clone();
        match value.get("error").and_then(Value::as_str) {
            Some(error) => Err(format!("{error}: {}", value["message"])),
            None => Ok(value),
        }
    }

    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, body)
            .await
            .unwrap_or_else(|error| panic!("WebDriver {method} {path}: {error}"))
    }

    async fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn find(&self, css: &str) -> Option<String> {
        let found = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .ok()?;
        found[ELEMENT].as_str().map(str::to_owned)
    }

    async fn element(&self, css: &str) -> String {
        match self.find(css).await {
            Some(element) => element,
            None => self.fail(&format!("no element {css:?}")).await,
        }
    }

    async fn count(&self, css: &str) -> usize {
        self.command(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .as_array()
        .map_or(0, Vec::len)
    }

    /// The rendered text of the first element matching `css` (empty while hidden); None if none
    /// matches.
    async fn text(&self, css: &str) -> Option<String> {
        let element = self.find(css).await?;
        let text = self
            .call("GET", &format!("/element/{element}/text"), None)
            .await;
        text.ok()?.as_str().map(str::to_owned)
    }

    async fn displayed(&self, css: &str) -> bool {
        let Some(element) = self.find(css).await else {
            return false;
        };
        self.call("GET", &format!("/element/{element}/displayed"), None)
            .await
            .is_ok_and(|shown| shown == true)
    }

    async fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let element = self.find(css).await?;
        let value = self
            .call("GET", &format!("/element/{element}/attribute/{name}"), None)
            .await
            .ok()?;
        value.as_str().map(str::to_owned)
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        if let Err(error) = self
            .call("POST", &format!("/element/{element}/click"), None)
            .await
        {
            self.fail(&format!("cannot click {css:?}: {error}")).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.command("POST", &format!("/element/{element}/clear"), None)
            .await;
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn script(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Waits until the first element matching `css` is shown with text containing `expected`;
    /// returns its text.
    async fn wait_text(&self, css: &str, expected: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(text) = self.text(css).await {
                if text.contains(expected) {
                    return text;
                }
                if Instant::now() > deadline {
                    self.fail(&format!("{css:?} says {text:?}, not {expected:?}"))
                        .await;
                }
            } else if Instant::now() > deadline {
                self.fail(&format!("no {css:?} (waiting for {expected:?})"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_displayed(&self, css: &str, shown: bool) {
        let deadline = Instant::now() + WAIT;
        while self.displayed(css).await != shown {
            if Instant::now() > deadline {
                let what = if shown { "shown" } else { "hidden" };
                self.fail(&format!("{css:?} is not {what}")).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the page as `target/ui-screenshots/<browser name>-<name>.png`.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.command("GET", "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 PNG");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{}-{name}.png", self.name));
        std::fs::write(&path, bytes).expect("write screenshot");
        path
    }

    async fn fail(&self, why: &str) -> ! {
        let shot = self.screenshot("failure").await;
        let body = self
            .script("return document.body.innerText;", json!([]))
            .await;
        panic!(
            "{why}\nscreenshot: {}\npage text:\n{}",
            shot.display(),
            body.as_str().unwrap_or_default()
        );
    }

    /// What the page logged to the browser console that the Content-Security-Policy refused, or
    /// that failed in the script.
    async fn console_errors(&self) -> Vec<String> {
        let entries = self
            .command("POST", "/se/log", Some(json!({"type": "browser"})))
            .await;
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| entry["message"].as_str())
            .filter(|message| {
                message.contains("Content Security Policy")
                    || message.contains("Refused to")
                    || message.contains("Uncaught")
            })
            .map(str::to_owned)
            .collect()
    }

    async fn quit(&self) {
        let _ = self.call("DELETE", "", None).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Chromium processes this browser started, should chromedriver not have ended them.
        let marker = self.profile.path().to_string_lossy().into_owned();
        for pid in processes_matching(&marker) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// An API call with a bearer token: the status and the JSON body.
async fn api(rucat: &Rucat, method: &str, path: &str, token: &str) -> (u16, Value) {
    let http = reqwest::Client::new();
    let url = format!("http://{}{path}", rucat.addr);
    let request = match method {
        "GET" => http.get(url),
        "DELETE" => http.delete(url),
        _ => http.post(url),
    };
    let response = request
        .bearer_auth(token)
        .send()
        .await
        .expect("API request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Alice signs in (after a wrong token is refused), creates an engine from the form, watches it
/// reach Running in the table, opens its page (events, log, connection string), stops it and
/// deletes it, each confirmed in the page's own dialog; the API agrees at every step, and bob's
/// engine never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_console_signs_in_creates_watches_stops_and_deletes() {
    let (alice, alice_entry) = token_create("alice", false);
    let (bob, bob_entry) = token_create("bob", false);
    let (root, root_entry) = token_create("root", true);
    // Engines take 5 s to start, so the table is seen changing state by itself.
    let config = format!(
        "{alice_entry}{bob_entry}{root_entry}\n[simulated]\nversions = [\"{SPARK_VERSION}\"]\n\
         start_delay_ms = 5000\n"
    );
    let rucat = Rucat::start_with(Options {
        platform: Some("simulated".into()),
        config: Some(config),
        token: None,
    })
    .await;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("http://{}/engines", rucat.addr))
        .bearer_auth(&bob)
        .json(&json!({"name": "bobs-engine", "engine_type": "Spark", "version": SPARK_VERSION}))
        .send()
        .await
        .expect("bob creates")
        .json()
        .await
        .expect("json");
    let bobs = created["id"].as_str().expect("bob's engine id").to_owned();

    let browser = Browser::start("console").await;
    let ui = format!("http://{}/ui", rucat.addr);
    browser.goto(&ui).await;
    browser.wait_displayed("#sign-in-view", true).await;

    // A wrong token: refused, with the API's message in the page.
    browser
        .type_into("#token-input", "rucat_not-a-real-token")
        .await;
    browser.click("#sign-in").await;
    let refused = browser.wait_text("#banner-text", "unknown API token").await;
    assert!(refused.contains("401"), "{refused}");
    assert!(browser.displayed("#sign-in-view").await);
    browser.screenshot("1-wrong-token").await;

    // Alice's token.
    browser.type_into("#token-input", &alice).await;
    browser.click("#sign-in").await;
    browser.wait_displayed("#list-view", true).await;
    browser.wait_displayed("#no-engines", true).await;
    browser.wait_text("#who", "signed in as alice").await;
    let stored = browser
        .script("return sessionStorage.getItem('rucat.token');", json!([]))
        .await;
    assert_eq!(stored, json!(alice), "the token is kept in sessionStorage");
    let versions = browser
        .script(
            "return [...document.querySelectorAll('#create-version option')].map(o => o.value);",
            json!([]),
        )
        .await;
    assert_eq!(versions, json!([SPARK_VERSION]));

    // A create the API refuses (a config the policy denies): its message in the page.
    browser.type_into("#create-name", "refused").await;
    browser
        .type_into("#create-configs", "spark.master=yarn")
        .await;
    browser.click("#create-submit").await;
    let message = browser.wait_text("#banner-text", "spark.master").await;
    assert!(message.contains("400"), "{message}");

    // The create form.
    browser.type_into("#create-name", "ui-demo").await;
    browser
        .click(&format!("#create-version option[value='{SPARK_VERSION}']"))
        .await;
    browser
        .type_into(
            "#create-configs",
            "spark.sql.shuffle.partitions=4\n\nspark.executor.memory = 1g\n",
        )
        .await;
    browser.type_into("#create-idle", "30").await;
    browser.click("#create-submit").await;
    browser.wait_text("#banner-text", "created").await;
    browser.wait_text("#engine-rows tr .name", "ui-demo").await;
    let id = browser
        .attribute("#engine-rows tr", "data-id")
        .await
        .expect("the row names its engine");
    let (status, engine) = api(&rucat, "GET", &format!("/engines/{id}"), &alice).await;
    assert_eq!(status, 200, "{engine}");
    assert_eq!(engine["name"], "ui-demo");
    assert_eq!(engine["owner"], "alice");
    assert_eq!(engine["version"], SPARK_VERSION);
    assert_eq!(engine["idle_timeout_minutes"], 30);
    assert_eq!(
        engine["configs"],
        json!({"spark.sql.shuffle.partitions": "4", "spark.executor.memory": "1g"})
    );

    // The state refreshes by itself until Running.
    let row = format!("#engine-rows tr[data-id='{id}']");
    let state_cell = format!("{row} .state");
    let first = browser.text(&state_cell).await.unwrap_or_default();
    assert_ne!(first, "Running", "the engine cannot run before 5 s");
    browser.wait_text(&state_cell, "Running").await;
    let (_, engine) = api(&rucat, "GET", &format!("/engines/{id}"), &alice).await;
    assert_eq!(engine["state"], "Running");
    let cells = browser.text(&row).await.unwrap_or_default();
    for expected in [id.as_str(), "ui-demo", "alice", SPARK_VERSION] {
        assert!(
            cells.contains(expected),
            "{expected} not in the row: {cells}"
        );
    }

    // Bob's engine is not listed.
    assert_eq!(browser.count("#engine-rows tr").await, 1);
    let page = browser
        .script("return document.body.innerText;", json!([]))
        .await;
    let page = page.as_str().unwrap_or_default();
    assert!(
        !page.contains(&bobs) && !page.contains("bobs-engine"),
        "{page}"
    );
    browser.screenshot("2-engines").await;

    // The engine's page: its facts, events, log and connection string.
    browser.click(&format!("{row} .name a")).await;
    browser.wait_displayed("#engine-view", true).await;
    browser.wait_text("#engine-state", "Running").await;
    browser.wait_text("#engine-name", "ui-demo").await;
    let facts = browser.text("#engine-facts").await.unwrap_or_default();
    assert!(
        facts.contains("spark.sql.shuffle.partitions=4") && facts.contains("30 minutes"),
        "{facts}"
    );
    let events = browser.wait_text("#event-rows", "Running").await;
    assert!(events.contains("alice"), "who created it: {events}");
    assert!(events.contains("→"), "{events}");
    assert!(
        browser.count("#event-rows tr").await >= 3,
        "created, starting, running: {events}"
    );
    let connection = browser
        .wait_text("#connection-string", &format!("x-rucat-engine={id}"))
        .await;
    assert!(connection.starts_with("sc://"), "{connection}");
    assert!(
        connection.ends_with(";token=<your token>"),
        "the page does not print the token: {connection}"
    );
    assert!(!connection.contains(&alice));
    let snippet = browser.text("#pyspark-snippet").await.unwrap_or_default();
    assert!(
        snippet.contains(&format!(
            "SparkSession.builder.remote(\"{connection}\").getOrCreate()"
        )),
        "{snippet}"
    );
    browser.wait_text("#logs", "simulated engine").await;

    // Copy: the clipboard gets the connection string with the token itself.
    let _ = browser
        .call(
            "POST",
            "/permissions",
            Some(json!({"descriptor": {"name": "clipboard-read"}, "state": "granted"})),
        )
        .await;
    browser.click("#copy-connection").await;
    browser.wait_text("#copy-status", "Copied").await;
    let copied = browser
        .command(
            "POST",
            "/execute/async",
            Some(json!({
                "script": "const done = arguments[0]; navigator.clipboard.readText().then(done, e => done('error: ' + e));",
                "args": [],
            })),
        )
        .await;
    let endpoint = engine["endpoint"].as_str().expect("endpoint");
    assert_eq!(copied, json!(format!("{endpoint};token={alice}")));

    // Follow: the log is fetched again and kept scrolled to its end.
    browser.click("#follow-logs").await;
    let following = browser
        .script(
            "return document.getElementById('follow-logs').checked;",
            json!([]),
        )
        .await;
    assert_eq!(following, json!(true));
    browser.screenshot("3-engine").await;

    // A stop that is cancelled changes nothing.
    browser.click("#engine-stop").await;
    browser.wait_displayed("#confirm", true).await;
    browser.wait_text("#confirm-text", "ui-demo").await;
    browser.screenshot("4-confirm-stop").await;
    browser.click("#confirm-cancel").await;
    browser.wait_displayed("#confirm", false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, engine) = api(&rucat, "GET", &format!("/engines/{id}"), &alice).await;
    assert_eq!(engine["state"], "Running", "a cancelled stop stops nothing");

    // The stop, confirmed.
    browser.click("#engine-stop").await;
    browser.wait_displayed("#confirm", true).await;
    browser.click("#confirm-ok").await;
    browser.wait_text("#engine-state", "Terminated").await;
    let (_, engine) = api(&rucat, "GET", &format!("/engines/{id}"), &alice).await;
    assert_eq!(engine["state"], "Terminated");
    let events = browser.wait_text("#event-rows", "Terminated").await;
    assert!(events.contains("stop requested by alice"), "{events}");
    browser.wait_displayed("#connect-wait", true).await;
    browser.screenshot("5-stopped").await;

    // The delete, confirmed: back to the table, without the engine.
    browser.click("#engine-delete").await;
    browser.wait_displayed("#confirm", true).await;
    browser.wait_text("#confirm-ok", "Delete").await;
    browser.click("#confirm-ok").await;
    browser.wait_displayed("#list-view", true).await;
    browser.wait_text("#banner-text", "deleted").await;
    browser.wait_displayed("#no-engines", true).await;
    assert_eq!(browser.count("#engine-rows tr").await, 0);
    let (status, _) = api(&rucat, "GET", &format!("/engines/{id}"), &alice).await;
    assert_eq!(status, 404, "deleted");
    let (status, _) = api(&rucat, "GET", &format!("/engines/{bobs}"), &bob).await;
    assert_eq!(status, 200, "bob's engine is untouched");
    browser.screenshot("6-deleted").await;

    // Sign out: the token is forgotten, and a reload asks for one again.
    browser.click("#sign-out").await;
    browser.wait_displayed("#sign-in-view", true).await;
    let stored = browser
        .script("return sessionStorage.getItem('rucat.token');", json!([]))
        .await;
    assert_eq!(stored, Value::Null);
    browser.goto(&ui).await;
    browser.wait_displayed("#sign-in-view", true).await;

    // An admin sees everyone's engines, with their owners.
    browser.type_into("#token-input", &root).await;
    browser.click("#sign-in").await;
    browser.wait_text("#who", "signed in as root (admin)").await;
    let bobs_row = format!("#engine-rows tr[data-id='{bobs}']");
    browser
        .wait_text(&format!("{bobs_row} .owner"), "bob")
        .await;
    browser
        .wait_text(&format!("{bobs_row} .name"), "bobs-engine")
        .await;
    assert_eq!(browser.count("#engine-rows tr").await, 1);
    browser.screenshot("7-admin").await;
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.quit().await;
}

/// Without authentication (loopback only), the console needs no sign-in: a request without a
/// token succeeds, and the user is `anonymous`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_console_skips_sign_in_without_authentication() {
    let rucat = Rucat::start_with(Options {
        platform: Some("simulated".into()),
        ..Options::default()
    })
    .await;
    let browser = Browser::start("anonymous").await;
    browser.goto(&format!("http://{}/ui/", rucat.addr)).await;
    browser.wait_displayed("#list-view", true).await;
    browser.wait_text("#who", "anonymous").await;
    assert!(!browser.displayed("#sign-out").await);
    browser.type_into("#create-name", "anon").await;
    browser.click("#create-submit").await;
    let row = "#engine-rows tr .state";
    browser.wait_text(row, "Running").await;
    let owner = browser.text("#engine-rows tr .owner").await;
    assert_eq!(owner.as_deref(), Some("anonymous"));
    browser.screenshot("1-list").await;
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.quit().await;
}

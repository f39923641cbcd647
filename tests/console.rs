//! The on-call console in a real browser: headless Chromium (Debian `chromium`) driven over
//! WebDriver by `chromedriver` (Debian `chromium-driver`), against the real daemon fed audit
//! events through its webhook, with notifications going to an HTTP receiver. Screenshots of
//! each page are saved under `target/test-artifacts/console/`.
//!
//! Also, without a browser, what a hostile page or client can do with the console's forms.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

const RULES: &str = r#"
rules:
  - name: secret-read
    severity: high
    match: { verbs: [get], resources: [secrets], response_codes: [200] }
    summary: '{{ user.username }} read secret {{ objectRef.name }}'
"#;

const PASSWORD: &str = "correct horse battery staple";

fn password_hash() -> String {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(PASSWORD.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Setup {
    dir: Scratch,
    hook: u16,
    http: u16,
    receiver: Receiver,
    daemon: Daemon,
}

fn start(name: &str, auth: bool) -> Setup {
    let dir = Scratch::new(name);
    let (hook, http) = (free_port(), free_port());
    let receiver = Receiver::start(0);
    std::fs::write(dir.0.join("rules.yaml"), RULES).unwrap();
    let auth = if auth {
        format!(
            "\n  auth: {{ basic_auth_users: {{ oncall: '{}' }} }}",
            password_hash()
        )
    } else {
        String::new()
    };
    let config = dir.0.join("auditwatch.yaml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir: state
rules: [{bundled}, rules.yaml]
http:
  listen: "127.0.0.1:{http}"{auth}
archive: {{ segment_max_age: 1s }}
sources:
  - webhook: {{ name: apiserver, listen: "127.0.0.1:{hook}", labels: {{ cluster: prod-eu }} }}
notifiers:
  hook: {{ webhook: {{ url: "http://127.0.0.1:{port}/hook" }} }}
route:
  receiver: hook
"#,
            port = receiver.port,
            bundled = repo().join("rules").display(),
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&dir.0, &config, http, 0);
    Setup {
        dir,
        hook,
        http,
        receiver,
        daemon,
    }
}

fn secret_read(id: &str, user: &str, secret: &str) -> String {
    event(id, "get", user, "secrets", secret, 200)
}

/// The summaries of every alert the receiver got (auditwatch's webhook JSON).
fn sent_summaries(r: &Receiver) -> Vec<String> {
    r.at("/hook")
        .iter()
        .flat_map(|n| n.body["alerts"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["summary"].as_str().map(str::to_owned))
        .collect()
}

/// chromedriver on a free port, and a headless Chromium session through it.
async fn browser(dir: &Path) -> (Server, Client) {
    let driver = need("/usr/bin/chromedriver");
    let port = free_port();
    let server = spawn_logged(
        dir,
        "chromedriver",
        Command::new(driver).arg(format!("--port={port}")),
    );
    sync(|| {
        wait_until("chromedriver to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
    });
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": need("/usr/bin/chromium"),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000", "--no-first-run", "--no-default-browser-check",
                     format!("--user-data-dir={}", dir.join("chromium-profile").display())],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session in headless Chromium");
    (server, client)
}

/// The element once the page that has it is loaded (a click or a submit returns before the
/// browser has navigated).
async fn wait_for(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
}

/// Clicks the element, then waits for `next` (on the page the click leads to).
async fn click_then(c: &Client, what: Locator<'_>, next: &str) -> fantoccini::elements::Element {
    c.find(what).await.unwrap().click().await.unwrap();
    wait_for(c, next).await
}

/// Blocking helpers (the daemon's HTTP, waits) inside the async test.
fn sync<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn artifacts() -> PathBuf {
    let dir = repo().join("target/test-artifacts/console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    std::fs::write(artifacts().join(format!("{name}.png")), png).unwrap();
}

/// The texts of the cells of each row of `table`'s body.
async fn rows(c: &Client, table: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for tr in c
        .find_all(Locator::Css(&format!("table#{table} tbody tr")))
        .await
        .unwrap()
    {
        let mut cells = Vec::new();
        for td in tr.find_all(Locator::Css("td")).await.unwrap() {
            cells.push(td.text().await.unwrap().trim().to_owned());
        }
        out.push(cells);
    }
    out
}

/// Reloads `url` until `ok` holds for the rows of `table` (the daemon works in the background).
async fn rows_until(
    c: &Client,
    url: &str,
    table: &str,
    what: &str,
    ok: impl Fn(&[Vec<String>]) -> bool,
) -> Vec<Vec<String>> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        c.goto(url).await.unwrap();
        let got = rows(c, table).await;
        if ok(&got) {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; last rows: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_call_console_in_headless_chromium() {
    let s = start("console-browser", true);
    let base = format!("http://127.0.0.1:{}", s.http);
    sync(|| {
        // The example events (README), then two secret reads for the test's own rule.
        let example = std::fs::read(repo().join("examples/eventlist.json")).unwrap();
        let resp = reqwest::blocking::Client::new()
            .post(format!("http://127.0.0.1:{}/", s.hook))
            .header("Content-Type", "application/json")
            .body(example)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        post(
            s.hook,
            &[
                secret_read("a-1", "alice", "db-password"),
                secret_read("b-1", "bob", "api-token"),
            ],
        );
        wait_until("both reads notified", || {
            let got = sent_summaries(&s.receiver);
            got.contains(&"alice read secret db-password".to_owned())
                && got.contains(&"bob read secret api-token".to_owned())
        });
    });
    let (_driver, c) = browser(&s.dir.0).await;

    // Login: the console sends a browser without a session to the login page, refuses a
    // wrong password, and returns to the page asked for.
    c.goto(&format!("{base}/alerts")).await.unwrap();
    assert!(
        c.current_url().await.unwrap().path().ends_with("/login"),
        "not sent to the login page"
    );
    screenshot(&c, "01-login").await;
    let login = c.form(Locator::Css("form#login")).await.unwrap();
    login.set_by_name("user", "oncall").await.unwrap();
    login.set_by_name("password", "wrong").await.unwrap();
    login.submit().await.unwrap();
    let error = wait_for(&c, "p.error").await;
    assert!(
        error
            .text()
            .await
            .unwrap()
            .contains("Wrong user name or password")
    );
    let login = c.form(Locator::Css("form#login")).await.unwrap();
    login.set_by_name("user", "oncall").await.unwrap();
    login.set_by_name("password", PASSWORD).await.unwrap();
    login.submit().await.unwrap();
    wait_for(&c, "table#alerts").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/alerts");

    // The alerts table: the example events' alerts (bundled packs), and the test rule's two,
    // newest first, delivered.
    let all: Vec<String> = rows(&c, "alerts")
        .await
        .into_iter()
        .map(|r| r[1].clone())
        .collect();
    for rule in ["repeated-auth-failures-per-user", "pod-exec-or-attach"] {
        assert!(all.iter().any(|r| r == rule), "{rule} not in {all:?}");
    }
    let alerts = rows_until(
        &c,
        &format!("{base}/alerts?rule=secret-read"),
        "alerts",
        "two sent alerts",
        |r| r.len() == 2 && r.iter().all(|row| row[7] == "sent"),
    )
    .await;
    assert_eq!(alerts[0][1], "secret-read");
    assert_eq!(alerts[0][2], "high");
    assert_eq!(alerts[0][3], "bob read secret api-token");
    assert_eq!(alerts[1][3], "alice read secret db-password");
    // The webhook source's label is on every alert.
    assert_eq!(alerts[0][5], "cluster=prod-eu");
    screenshot(&c, "02-alerts").await;

    // Filters narrow the table.
    c.goto(&format!(
        "{base}/alerts?rule=secret-read&label=cluster%3Dprod-eu"
    ))
    .await
    .unwrap();
    assert_eq!(rows(&c, "alerts").await.len(), 2);
    c.goto(&format!("{base}/alerts?label=cluster%3Ddev"))
        .await
        .unwrap();
    assert_eq!(rows(&c, "alerts").await[0], ["No alerts."]);
    c.goto(&format!("{base}/alerts?rule=secret-read&q=alice"))
        .await
        .unwrap();
    let filtered = rows(&c, "alerts").await;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0][3], "alice read secret db-password");

    // An alert's page: its request, its delivery, and the full record from the archive.
    c.goto(&format!("{base}/alerts?rule=secret-read"))
        .await
        .unwrap();
    click_then(
        &c,
        Locator::Css("table#alerts tbody tr:nth-child(2) td a"),
        "table#events",
    )
    .await;
    let h1 = c
        .find(Locator::Css("h1"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(h1, "secret-read: alice read secret db-password");
    let events = rows(&c, "events").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0][1], "alice");
    assert_eq!(events[0][6], "a-1");
    let deliveries = rows(&c, "deliveries").await;
    assert_eq!(
        deliveries,
        [vec!["hook".to_owned(), "sent".into(), String::new()]]
    );
    let detail_url = c.current_url().await.unwrap().to_string();
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let source = c.source().await.unwrap();
        if source.contains("details class=\"record\"") {
            assert!(source.contains("db-password"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the full record never came from the archive"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.goto(&detail_url).await.unwrap();
    }
    screenshot(&c, "03-alert").await;

    // A silence from the alert: previewed first (both recent alerts match), then saved.
    click_then(
        &c,
        Locator::LinkText("Silence alerts like this…"),
        "form#silence-form",
    )
    .await;
    let form = c.form(Locator::Css("form#silence-form")).await.unwrap();
    let matchers = c
        .find(Locator::Css("textarea[name=matchers]"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default();
    assert_eq!(matchers.lines().next(), Some("rule=\"secret-read\""));
    form.set_by_name("comment", "rotating secrets, expected reads")
        .await
        .unwrap();
    assert!(
        c.find(Locator::Css("button#create")).await.is_err(),
        "Create offered before a preview"
    );
    click_then(&c, Locator::Css("button[value=preview]"), "table#preview").await;
    let h2 = c
        .find(Locator::Css("h2"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(h2.starts_with("It would have muted 2 of the last "), "{h2}");
    assert_eq!(rows(&c, "preview").await.len(), 2);
    screenshot(&c, "04-silence-preview").await;
    let notice = click_then(&c, Locator::Css("button#create"), "p.notice").await;
    assert!(notice.text().await.unwrap().starts_with("Silence "));
    let silences = rows(&c, "silences").await;
    assert_eq!(silences.len(), 1);
    assert_eq!(silences[0][1], "active");
    assert_eq!(silences[0][5], "oncall", "who made the silence");
    screenshot(&c, "05-silences").await;

    // The next matching alert is muted, and the console says so.
    sync(|| post(s.hook, &[secret_read("c-1", "carol", "tls-key")]));
    let alerts = rows_until(
        &c,
        &format!("{base}/alerts?rule=secret-read"),
        "alerts",
        "carol's alert silenced",
        |r| {
            r.first()
                .is_some_and(|row| row[3] == "carol read secret tls-key" && row[7] == "silenced")
        },
    )
    .await;
    assert_eq!(alerts.len(), 3);
    screenshot(&c, "06-silenced").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !sent_summaries(&s.receiver).contains(&"carol read secret tls-key".to_owned()),
        "a silenced alert was sent"
    );

    // The rules page shows the counts /metrics serves.
    c.goto(&format!("{base}/rules")).await.unwrap();
    let metrics = sync(|| s.daemon.metrics());
    let row = c
        .find(Locator::Css("table#rules tr[data-rule=\"secret-read\"]"))
        .await
        .unwrap();
    for (cell, series) in [
        (
            "matches",
            "auditwatch_rule_matches_total{rule=\"secret-read\"}",
        ),
        (
            "alerts",
            "auditwatch_alerts_total{rule=\"secret-read\",severity=\"high\"}",
        ),
        (
            "evaluations",
            "auditwatch_rule_evaluations_total{rule=\"secret-read\"}",
        ),
    ] {
        let shown: f64 = row
            .find(Locator::Css(&format!("td[data-metric={cell}]")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(shown, sample(&metrics, series), "{cell}");
    }
    assert_eq!(
        sample(
            &metrics,
            "auditwatch_alerts_total{rule=\"secret-read\",severity=\"high\"}"
        ),
        3.0
    );
    // The source's label, as a bounded metric label.
    assert_eq!(
        sample(
            &metrics,
            "auditwatch_alerts_by_source_label_total{label=\"cluster\",rule=\"secret-read\",severity=\"high\",value=\"prod-eu\"}"
        ),
        3.0
    );
    // One row per loaded rule: the bundled packs and the test's own.
    assert_eq!(
        rows(&c, "rules").await.len() as f64,
        sample(&metrics, "auditwatch_rules_loaded")
    );
    screenshot(&c, "07-rules").await;

    // Sources: the webhook's counts and labels, and one event clock.
    c.goto(&format!("{base}/sources")).await.unwrap();
    let sources = rows(&c, "sources").await;
    assert_eq!(sources[0][0], "apiserver");
    assert_eq!(sources[0][1], "cluster=prod-eu");
    assert_eq!(sources[0][2], "10", "7 example events and 3 reads");
    screenshot(&c, "08-sources").await;

    // Expire the silence from its page; log out.
    c.goto(&format!("{base}/silences")).await.unwrap();
    click_then(&c, Locator::Css("table#silences button"), "p.notice").await;
    assert_eq!(rows(&c, "silences").await[0][1], "expired");
    click_then(&c, Locator::Css("nav form button"), "form#login").await;
    c.goto(&format!("{base}/alerts")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/login"));
    c.close().await.unwrap();
}

/// What a first page gives a client that keeps no cookies and follows no redirects.
struct FirstPage {
    client: reqwest::blocking::Client,
    /// The whole `Set-Cookie` header.
    set_cookie: String,
    /// `auditwatch_session=…`, for a `Cookie` header.
    session: String,
    /// The form's CSRF token.
    csrf: String,
    headers: reqwest::header::HeaderMap,
}

fn first_page(url: &str) -> FirstPage {
    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client.get(url).send().unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    let set_cookie = headers["set-cookie"].to_str().unwrap().to_owned();
    let session = set_cookie.split(';').next().unwrap().to_owned();
    let body = page.text().unwrap();
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    FirstPage {
        client,
        set_cookie,
        session,
        csrf,
        headers,
    }
}

/// What a page on another site, or a client without the form's token, can do: nothing.
#[test]
fn forms_refuse_forgeries() {
    let s = start("console-forgery", false);
    let base = format!("http://127.0.0.1:{}", s.http);
    // A first page gives a session cookie and the form's token.
    let FirstPage {
        client,
        set_cookie: cookie,
        session,
        csrf: token,
        headers,
    } = first_page(&format!("{base}/silences/new"));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let form = |csrf: &str| {
        format!(
            "csrf={csrf}&matchers=rule%3D%22secret-read%22&duration=1h&comment=x&created_by=&action=create"
        )
    };
    let post = |cookie: Option<&str>, origin: Option<&str>, body: String, ctype: &str| {
        let mut r = client
            .post(format!("{base}/silences/new"))
            .header("content-type", ctype)
            .body(body);
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send().unwrap().status().as_u16()
    };
    let urlenc = "application/x-www-form-urlencoded";
    // No token, a wrong one, another session's, a foreign origin, no session, a non-form body.
    assert_eq!(post(Some(&session), None, form(""), urlenc), 403);
    assert_eq!(post(Some(&session), None, form("AAAA"), urlenc), 403);
    assert_eq!(
        post(
            Some("auditwatch_session=forged"),
            None,
            form(&token),
            urlenc
        ),
        403
    );
    assert_eq!(
        post(
            Some(&session),
            Some("http://evil.example"),
            form(&token),
            urlenc
        ),
        403
    );
    assert_eq!(post(None, None, form(&token), urlenc), 403);
    assert_eq!(post(Some(&session), None, form(&token), "text/plain"), 415);
    // A rebinding page's Host.
    let rebound = client
        .get(format!("{base}/alerts"))
        .header("host", "evil.example")
        .send()
        .unwrap();
    assert_eq!(rebound.status(), 403);
    assert!(
        s.daemon
            .metrics()
            .contains("auditwatch_http_refused_total{reason=\"csrf\"} 4")
    );
    // None of it made a silence; the real form does.
    let list = |c: &reqwest::blocking::Client| -> Vec<serde_json::Value> {
        c.get(format!("{base}/api/v1/silences"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    assert!(list(&client).is_empty());
    assert_eq!(post(Some(&session), Some(&base), form(&token), urlenc), 200);
    let made = list(&client);
    assert_eq!(made.len(), 1);
    assert_eq!(made[0]["authenticated_as"], "anonymous");
    // A filter that does not parse is said on the page, which still renders.
    let bad = client
        .get(format!("{base}/alerts?severity=urgent&since=yesterday"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(bad.contains("unknown severity &quot;urgent&quot;"), "{bad}");
    // Escaping: an event's text is shown, never run.
    post_event_with_markup(s.hook);
    wait_until("the markup alert", || {
        client
            .get(format!("{base}/alerts"))
            .send()
            .unwrap()
            .text()
            .unwrap()
            .contains("&lt;script&gt;")
    });
    let page = client
        .get(format!("{base}/alerts"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!page.contains("<script>"), "event text rendered as markup");
}

fn post_event_with_markup(hook: u16) {
    post(
        hook,
        &[secret_read("m-1", "<script>alert(1)</script>", "x")],
    );
}

/// The login form against a guesser and a planted session: a wrong password is refused (the
/// check is the API's, throttled in `net::auth`), and a login starts a new session, so a
/// session ID known before it (say, planted by an attacker) is worth nothing after it.
#[test]
fn login_refuses_guesses_and_starts_a_new_session() {
    let s = start("console-login", true);
    let base = format!("http://127.0.0.1:{}", s.http);
    let FirstPage {
        client,
        session: cookie,
        csrf,
        ..
    } = first_page(&format!("{base}/login"));
    let try_login = |password: &str| {
        client
            .post(format!("{base}/login"))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "csrf={csrf}&next=%2Falerts&user=oncall&password={password}"
            ))
            .send()
            .unwrap()
    };
    for i in 0..3 {
        let wrong = try_login(&format!("guess-{i}"));
        assert_eq!(wrong.status(), 401);
        assert!(
            wrong
                .text()
                .unwrap()
                .contains("Wrong user name or password")
        );
    }
    assert!(
        sample(
            &s.daemon.metrics(),
            "auditwatch_http_refused_total{reason=\"unauthenticated\"}"
        ) >= 3.0
    );
    // The right password starts a new session.
    let ok = try_login(&PASSWORD.replace(' ', "+"));
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/alerts");
    let fresh = ok.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(fresh, cookie, "the session ID did not change at login");
    let with = |c: &str| {
        client
            .get(format!("{base}/alerts"))
            .header("cookie", c)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(with(&fresh), 200);
    assert_eq!(with(&cookie), 303, "the pre-login session still works");
}

//! A small W3C WebDriver client for the UI tests: starts `chromedriver`,
//! opens a headless Chromium session and speaks the WebDriver HTTP JSON
//! protocol with reqwest. Only what the tests use.
//!
//! Chromium and chromedriver must be installed (Debian: `apt-get install
//! chromium chromium-driver`; `.ci/run` does it). When they are not, the
//! start fails with an error that says so: a browser test never passes
//! by skipping.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::process::Proc;

/// The key of an element reference in WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// A headless Chromium driven over WebDriver. The browser and its driver
/// stop when this is dropped.
pub struct Browser {
    driver: Proc,
    base: String,
    session: String,
    http: reqwest::Client,
}

/// An element on the current page.
#[derive(Clone, Debug)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a headless Chromium session that accepts the
    /// hub's certificate (issued by the hub's own CA, which the browser
    /// does not know). `log_dir` receives chromedriver's log.
    ///
    /// # Errors
    /// chromedriver or chromium is missing, or the session cannot start.
    pub async fn start(log_dir: &Path) -> anyhow::Result<Self> {
        let driver_bin = find_program("CHROMEDRIVER", &["chromedriver"]).ok_or_else(|| {
            anyhow::anyhow!(
                "chromedriver not found on PATH (or $CHROMEDRIVER): the UI tests need headless Chromium; install it with `apt-get install -y chromium chromium-driver` (.ci/run does)"
            )
        })?;
        let chromium = find_program("CHROMIUM", &["chromium", "chromium-browser", "google-chrome"])
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "chromium not found on PATH (or $CHROMIUM): the UI tests need headless Chromium; install it with `apt-get install -y chromium chromium-driver` (.ci/run does)"
                )
            })?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let driver = Proc::spawn(
            "chromedriver",
            &driver_bin,
            &[format!("--port={port}")],
            &[],
            log_dir.join("chromedriver.log"),
        )?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        crate::eventually("chromedriver ready", Duration::from_secs(30), || {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let r = http
                    .get(format!("{base}/status"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let v: Value = serde_json::from_slice(&r.bytes().await.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
                if v["value"]["ready"] == json!(true) {
                    Ok(())
                } else {
                    Err(v.to_string())
                }
            }
        })
        .await
        .with_context(|| format!("chromedriver log: {}", driver.tail(20)))?;
        let caps = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "acceptInsecureCerts": true,
                "goog:chromeOptions": {
                    "binary": chromium.display().to_string(),
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,900"]
                }
            }}
        });
        let mut b = Self {
            driver,
            base,
            session: String::new(),
            http,
        };
        let v = b
            .call(reqwest::Method::POST, "/session", Some(caps))
            .await
            .context("starting a Chromium session")?;
        b.session = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no sessionId in {v}"))?
            .to_owned();
        Ok(b)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        } else if method == reqwest::Method::POST {
            req = req.header("content-type", "application/json").body("{}");
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("WebDriver {path}"))?;
        let status = resp.status();
        let v: Value = serde_json::from_slice(&resp.bytes().await?)
            .with_context(|| format!("WebDriver {path}: answer is not JSON"))?;
        if !status.is_success() {
            anyhow::bail!(
                "WebDriver {method} {path}: {status}: {} {}",
                v["value"]["error"],
                v["value"]["message"]
            );
        }
        Ok(v["value"].clone())
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url`.
    ///
    /// # Errors
    /// The browser refuses.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            &self.at("/url"),
            Some(json!({"url": url})),
        )
        .await
        .map(drop)
    }

    /// The current URL.
    ///
    /// # Errors
    /// The browser refuses.
    pub async fn url(&self) -> anyhow::Result<String> {
        let v = self
            .call(reqwest::Method::GET, &self.at("/url"), None)
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Every element matching `css` (none: empty).
    ///
    /// # Errors
    /// The browser refuses.
    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element>> {
        let v = self
            .call(
                reqwest::Method::POST,
                &self.at("/elements"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT_KEY].as_str().map(|s| Element(s.to_owned())))
            .collect())
    }

    /// The first element matching `css`.
    ///
    /// # Errors
    /// There is none, or the browser refuses.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element> {
        self.find_all(css)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no element matches {css:?}"))
    }

    /// Waits until an element matches `css`.
    ///
    /// # Errors
    /// The deadline passes.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> anyhow::Result<Element> {
        crate::eventually(&format!("an element {css:?}"), timeout, || async {
            match self.find_all(css).await {
                Ok(v) if !v.is_empty() => Ok(v[0].clone()),
                Ok(_) => Err(format!("none on {}", self.url().await.unwrap_or_default())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    /// The rendered text of `e`.
    ///
    /// # Errors
    /// The element is gone, or the browser refuses.
    pub async fn text(&self, e: &Element) -> anyhow::Result<String> {
        let v = self
            .call(
                reqwest::Method::GET,
                &self.at(&format!("/element/{}/text", e.0)),
                None,
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Attribute `name` of `e`.
    ///
    /// # Errors
    /// The element is gone, or the browser refuses.
    pub async fn attr(&self, e: &Element, name: &str) -> anyhow::Result<Option<String>> {
        let v = self
            .call(
                reqwest::Method::GET,
                &self.at(&format!("/element/{}/attribute/{name}", e.0)),
                None,
            )
            .await?;
        Ok(v.as_str().map(str::to_owned))
    }

    /// Clicks `e`.
    ///
    /// # Errors
    /// The element is gone or cannot be clicked.
    pub async fn click(&self, e: &Element) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            &self.at(&format!("/element/{}/click", e.0)),
            None,
        )
        .await
        .map(drop)
    }

    /// Empties the field `e`.
    ///
    /// # Errors
    /// The element is gone or is not editable.
    pub async fn clear(&self, e: &Element) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            &self.at(&format!("/element/{}/clear", e.0)),
            Some(json!({})),
        )
        .await
        .map(drop)
    }

    /// Types `text` into `e`.
    ///
    /// # Errors
    /// The element is gone or takes no input.
    pub async fn type_text(&self, e: &Element, text: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            &self.at(&format!("/element/{}/value", e.0)),
            Some(json!({"text": text})),
        )
        .await
        .map(drop)
    }

    /// Runs `script` (a function body) in the page and returns its value.
    ///
    /// # Errors
    /// The script throws, or the browser refuses.
    pub async fn execute(&self, script: &str) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::POST,
            &self.at("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Saves a PNG of the viewport to `path`.
    ///
    /// # Errors
    /// The browser refuses, or the file cannot be written.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        use base64::Engine as _;
        let v = self
            .call(reqwest::Method::GET, &self.at("/screenshot"), None)
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .context("screenshot is not base64")?;
        anyhow::ensure!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// chromedriver's last log lines, for failure messages.
    pub fn driver_log(&self) -> String {
        self.driver.tail(30)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session so chromedriver closes Chromium before it is
        // killed itself (a plain blocking request: no runtime in drop).
        if self.session.is_empty() {
            return;
        }
        let Some(hostport) = self.base.strip_prefix("http://") else {
            return;
        };
        if let Ok(mut s) = std::net::TcpStream::connect(hostport) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                s,
                "DELETE /session/{} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    }
}

/// Where the UI tests save their screenshots: `target/ui-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    crate::workspace_root()
        .join("target")
        .join("ui-screenshots")
}

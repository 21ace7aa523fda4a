//! `eventctl health URL`: one GET of a service's `/healthz` or `/readyz`,
//! success on a 2xx answer. The container image has no shell or HTTP
//! client, so this is what docker-compose.yml's health checks run.

use std::time::Duration;

use anyhow::{Context, bail};

/// `eventctl health` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// The URL to GET, e.g. `http://127.0.0.1:8080/healthz`.
    pub url: String,
    /// Give up after this long (connect and answer).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// GETs the URL once (no proxy, no redirects); `Ok` on a 2xx status.
pub async fn check(args: &HealthArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(args.timeout)
        .build()?;
    let resp = client
        .get(&args.url)
        .send()
        .await
        .with_context(|| format!("no answer from {}", args.url))?;
    let status = resp.status();
    if !status.is_success() {
        bail!("{} answered {status}", args.url);
    }
    Ok(())
}

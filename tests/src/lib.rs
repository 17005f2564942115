//! Test support: fakes of the systems around paperless-ai-serverless, served on loopback, for
//! the end-to-end tests and the benchmark.

pub mod aws_stack;
pub mod binary_size;
pub mod contract;
pub mod counting;
pub mod fake_openai;
pub mod fake_otlp;
pub mod fake_paperless;
pub mod moto;
pub mod quality;
pub mod runtime_api;
pub mod template;

/// Starts a `pai serve` binary with exactly `env` (plus `PATH`), its stderr discarded, and
/// returns the process with the base URL it prints on its first line.
pub fn spawn_pai_serve(bin: &str, env: &[(&str, String)]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pai serve starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("pai prints its address");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    (child, url)
}

/// The environment of a `pai serve` wired to a fake Paperless (token `token`, webhook secret
/// `secret`) and a fake OpenAI-compatible server, with its data in `data_dir`, on a free port.
pub fn serve_env(
    data_dir: &std::path::Path,
    paperless: &fake_paperless::FakePaperless,
    token: &str,
    secret: &str,
    model: &fake_openai::FakeOpenAi,
) -> Vec<(&'static str, String)> {
    vec![
        ("DATA_DIR", data_dir.display().to_string()),
        ("PORT", "0".to_string()),
        ("PAPERLESS_URL", paperless.url()),
        ("PAPERLESS_TOKEN", token.to_string()),
        ("WEBHOOK_SECRET", secret.to_string()),
        ("LLM_PROVIDER", "openai".to_string()),
        ("LLM_BASE_URL", model.url()),
    ]
}

//! What the outgoing HTTP clients (Hydra, health checks, the CLI) say about a failed request.

/// reqwest's Display hides the cause ("error sending request"); name it.
pub fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

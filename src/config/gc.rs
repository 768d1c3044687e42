//! `[gc]`: optional clean-up after a healthy upgrade (off by default).

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// Keep the newest N system generations, then collect garbage.
    pub keep_generations: u32,
}

impl GcConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.keep_generations == 0 {
            return Err(
                "keep_generations must be at least 1 (the running system's generation)".into(),
            );
        }
        Ok(())
    }
}

//! The fallback poll on `dates` (interim: validation only).

pub fn validate_dates(_dates: &str) -> Result<(), String> {
    Ok(())
}

pub fn calendar_command(_expr: &str, _iterations: u32, _base: Option<&str>, _json: bool) -> u8 {
    eprintln!("calendar: not built yet");
    2
}

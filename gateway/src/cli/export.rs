//! `edgejoin export spark --config F [--output job.py]`: the config's pipeline as a PySpark job
//! ([`crate::export::spark`]), written to a file or stdout.

use std::io::Write as _;
use std::path::Path;

/// Writes the job; refuses, with the reason, what Spark cannot express.
pub fn spark(config: &Path, output: Option<&Path>) -> Result<(), Box<dyn std::error::Error>> {
    let c = crate::config::load(config)?;
    let job = crate::export::spark::job(&c, &config.display().to_string())?;
    match output {
        Some(p) if p != Path::new("-") => {
            std::fs::write(p, job).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
            }
            eprintln!(
                "edgejoin: wrote {} (run: spark-submit {} --input events.jsonl --output DIR)",
                p.display(),
                p.display()
            );
        }
        _ => std::io::stdout().lock().write_all(job.as_bytes())?,
    }
    Ok(())
}

//! Shared by the benchmarks: running a PyTorch twin script and reading its timings.

use std::collections::HashMap;
use std::process::Command;

/// Runs `benches/<script>` with `args` under python3; returns a label ("PyTorch 2.x cpu (2
/// threads)") and the script's `{case: ms}` map, or why PyTorch was not measured.
///
/// `APGA_TORCH_CUDA=1` runs the twin on PyTorch's CUDA back end (`--cuda`), for the figures
/// beside a real GPU; `APGA_PYTHON` names another interpreter (as `apga-gpu bench` reads it).
pub fn torch_ms(script: &str, args: &[String]) -> Result<(String, HashMap<String, f64>), String> {
    let path = format!("{}/benches/{script}", env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("APGA_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let cuda = std::env::var("APGA_TORCH_CUDA").is_ok_and(|v| v == "1");
    let out = Command::new(&python)
        .arg(path)
        .args(args)
        .args(cuda.then_some("--cuda"))
        .output()
        .map_err(|e| format!("{python} not runnable: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "PyTorch twin failed: {}",
            err.lines().last().unwrap_or("no output")
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("PyTorch twin output: {e}"))?;
    let label = format!(
        "PyTorch {} {} ({} threads)",
        v["torch"].as_str().unwrap_or("?"),
        v["device"].as_str().unwrap_or("?"),
        v["threads"]
    );
    let ms = v["ms"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, x)| x.as_f64().map(|f| (k.clone(), f)))
                .collect()
        })
        .unwrap_or_default();
    Ok((label, ms))
}

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,wgpu_hal=off"),
    )
    .init();
    let cli = apga_gpu::cli::Cli::parse();
    if cli.no_autotune {
        // Read by GpuOptions::default() wherever a context is opened.
        std::env::set_var("APGA_NO_AUTOTUNE", "1");
    }
    match apga_gpu::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

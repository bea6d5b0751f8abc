use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flowhook::config::Settings;
use flowhook::startup::Application;

/// flowhook: verified webhooks in, durable message state, follow-ups out.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file [default: config.toml, if present]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Load and validate the configuration, then exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flowhook: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => check_config(&settings),
        Command::Serve => serve(settings),
    }
}

fn check_config(settings: &Settings) -> ExitCode {
    if let Err(e) = settings.check_safe_to_expose() {
        eprintln!("flowhook: {e}");
        return ExitCode::from(2);
    }
    let weak = settings.placeholder_secrets();
    println!(
        "configuration is valid (bind {}, store {})",
        settings.server.bind,
        settings.store.path.display()
    );
    if !weak.is_empty() {
        println!(
            "note: placeholder secrets, fine on loopback only: {}",
            weak.join(", ")
        );
    }
    ExitCode::SUCCESS
}

fn serve(settings: Settings) -> ExitCode {
    flowhook::telemetry::init(&settings.log);
    if let Err(e) = settings.check_safe_to_expose() {
        tracing::error!("{e}");
        return ExitCode::from(2);
    }
    let bind = settings.server.bind.clone();
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings)?;
        tracing::info!(%bind, port = app.port(), "flowhook listening");
        app.run_until_stopped().await?;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

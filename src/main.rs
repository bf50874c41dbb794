//! The `vireo` command: a PC emulator with a QEMU-compatible command line.

use std::process::ExitCode;
use vireo::cli::{self, Command};
use vireo::console::RawTerminal;
use vireo::Machine;

fn run() -> vireo::Result<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli::parse(&args)? {
        Command::Help => print!("{}", cli::HELP),
        Command::Version => println!(
            "vireo {} (QEMU-compatible command line)",
            env!("CARGO_PKG_VERSION")
        ),
        Command::DeviceHelp => print!("{}", cli::device::list()),
        Command::DeviceProps(name) => print!("{}", cli::device::props(name)),
        Command::CpuHelp => {
            println!("Available CPUs:");
            println!("  host     all features this host's KVM supports (KVM only)");
            println!("  max      KVM: same as host; TCG: everything vireo's TCG implements");
            println!("  qemu64   QEMU's baseline x86-64 model (both engines)");
        }
        Command::MachineHelp => {
            println!("Supported machines are:");
            println!("pc                   Standard PC (i440FX + PIIX, 1996) (default)");
        }
        Command::LogHelp => {
            println!("Log items (comma separated):");
            for (name, target, desc) in cli::LOG_CATEGORIES {
                println!("{name:<13} {desc} [{target}]");
            }
        }
        Command::Run(config, log) => {
            vireo::logging::init(&log)?;
            let stdin = config.stdin_input;
            let mut machine = Machine::new(*config)?;
            let _raw = stdin.then(RawTerminal::enter);
            if stdin {
                machine.attach_stdin();
            }
            let outcome = machine.run()?;
            log::info!(target: "vireo::machine", "machine stopped: {outcome:?}");
            return Ok(outcome.exit_status());
        }
    }
    Ok(0)
}

fn main() -> ExitCode {
    match run() {
        Ok(status) => ExitCode::from(status as u8),
        Err(e) => {
            eprintln!("vireo: {e}");
            ExitCode::from(1)
        }
    }
}

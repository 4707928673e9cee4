//! The `rucat` binary: the roles (`serve`, `server`, `monitor`, `proxy`) and the client
//! (`engine …`). The command line lives in [`cli`].

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

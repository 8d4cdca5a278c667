//! The `layerstream` binary: see `layerstream --help`.

fn main() -> std::process::ExitCode {
    layerstream::cli::main()
}

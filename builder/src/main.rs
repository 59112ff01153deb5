fn main() {
    std::process::exit(strata_builder::cli::main());
}

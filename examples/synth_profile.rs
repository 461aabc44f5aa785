//! Writes a SPEC §6 benchmark profile's random model and F16 stores (the files the criterion
//! benches use), without Python: `cargo run --release --example synth_profile -- industrial DIR`.

use hcn_prerank::synth::{ensure_profile_files, Profile};
use hcn_prerank::tensor::DType;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let profile = match args.next().as_deref() {
        Some("public") => Profile::Public,
        Some("industrial") => Profile::Industrial,
        _ => return Err("usage: synth_profile public|industrial DIR [ROWS]".into()),
    };
    let dir = args.next().ok_or("missing DIR")?;
    let rows = args.next().map_or(Ok(1_000_000), |r| r.parse())?;
    let (m, t, c) = ensure_profile_files(dir.as_ref(), profile, rows, DType::F16)?;
    println!("{}\n{}\n{}", m.display(), t.display(), c.display());
    Ok(())
}

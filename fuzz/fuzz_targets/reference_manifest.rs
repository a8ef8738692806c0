//! Reference parsing and manifest/index parsing never panic, and what parses round-trips.
#![no_main]

use boxrun::digest::Digest;
use boxrun::platform::Platform;
use boxrun::reference::Reference;
use boxrun::registry::manifest::{self, Manifest, RawManifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(reference) = Reference::parse(text, "docker.io")
    {
        // The normalised form parses to itself.
        let again = Reference::parse(&reference.to_string(), "docker.io").expect("normalised reference parses");
        assert_eq!(again, reference);
    }
    let raw = RawManifest { bytes: data.to_vec(), digest: Digest::of(data), media_type: manifest::sniff_media_type(data) };
    if let Ok(Manifest::Index(index)) = manifest::parse(&raw, "fuzz") {
        let _ = manifest::choose_platform(&index, &Platform::host());
    }
});

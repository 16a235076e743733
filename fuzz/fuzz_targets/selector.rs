//! The selector parser: any text gets a selector or an error whose column
//! lies within it, and a selector prints to text that parses back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_proto::Selector;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Selector::parse(text) {
        Ok(selector) => {
            let printed = selector.to_string();
            assert_eq!(
                Selector::parse(&printed).as_ref(),
                Ok(&selector),
                "{printed}"
            );
        }
        Err(e) => assert!(e.column >= 1 && e.column <= text.chars().count() + 1),
    }
});

//! Properties of the ingest chunker (`cli::ingest::chunk_file`), checked here because the
//! chunker is the CLI's: whatever the text, chunks respect the size, are never blank, keep every
//! word in order, never cut a paragraph that fits, and are strings, so no cut falls inside a
//! character.

use deeprecall::cli::ingest::chunk_file;
use proptest::prelude::*;

/// Text made of words (with multi-byte characters), sentence ends, headings, blank lines and
/// runs of punctuation, so that every path of the chunker is taken.
fn text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        "[a-zé日ß]{1,12}",
        Just(" ".to_string()),
        Just(". ".to_string()),
        Just("! ".to_string()),
        Just("\n".to_string()),
        Just("\n\n".to_string()),
        Just("# ".to_string()),
        Just("v1.2".to_string()),
        Just(" --- ".to_string()),
        "[a-z]{30,90}",
    ];
    prop::collection::vec(token, 0..80).prop_map(|tokens| tokens.concat())
}

fn alphanumerics(text: &str) -> String {
    text.chars().filter(|c| c.is_alphanumeric()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn chunks_respect_the_size_and_keep_every_word_in_order(
        text in text(),
        chunk_size in 1usize..120,
    ) {
        let chunks = chunk_file("f.md", &text, chunk_size);
        for (index, chunk) in chunks.iter().enumerate() {
            prop_assert!(chunk.content.chars().count() <= chunk_size, "{:?}", chunk.content);
            // The server refuses a blank document, so a blank chunk would fail the ingest.
            prop_assert!(!chunk.content.trim().is_empty(), "blank chunk {:?}", chunk.content);
            prop_assert_eq!(&chunk.id, &format!("f.md#{index}"));
        }
        let joined: String = chunks.iter().map(|chunk| chunk.content.as_str()).collect();
        prop_assert_eq!(alphanumerics(&joined), alphanumerics(&text));
        for paragraph in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
            if paragraph.chars().count() <= chunk_size {
                prop_assert!(
                    chunks.iter().any(|chunk| chunk.content.contains(paragraph)),
                    "paragraph {:?} was cut", paragraph
                );
            }
        }
    }
}

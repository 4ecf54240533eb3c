//! Certificate subjects as callers: the subject of a verified client certificate, and the
//! subjects key file entries name, brought to one form so that they compare equal whichever
//! way they were written.
//!
//! A subject is a sequence of `TYPE=value` attributes. `openssl x509 -noout -subject` prints
//! it in certificate order (`C = US, O = Example, CN = alice`), RFC 4514 in reverse
//! (`CN=alice,O=Example,C=US`): both are accepted, with any spacing around `,` and `=` and any
//! case in the attribute types. Values compare exactly, escapes included.

use std::fmt;

use rustls::pki_types::CertificateDer;

/// A subject in its compared form: the attributes in certificate order, types upper-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject(Vec<String>);

impl Subject {
    /// Reads a subject as a key file writes it; `None` when it holds no `TYPE=value`
    /// attribute, or one without a type or a value.
    pub fn parse(text: &str) -> Option<Subject> {
        let attributes = split_unescaped(text, ',')
            .into_iter()
            .map(|attribute| {
                let (kind, value) = attribute.split_once('=')?;
                let (kind, value) = (kind.trim(), value.trim());
                (!kind.is_empty() && !value.is_empty())
                    .then(|| format!("{}={value}", kind.to_ascii_uppercase()))
            })
            .collect::<Option<Vec<_>>>()?;
        (!attributes.is_empty()).then_some(Subject(attributes))
    }

    /// The subject of a certificate, from its DER; `None` if it does not parse.
    pub fn of_certificate(certificate: &CertificateDer<'_>) -> Option<Subject> {
        use x509_cert::der::Decode;
        let parsed = x509_cert::Certificate::from_der(certificate.as_ref()).ok()?;
        // Rendered in RFC 4514 order, last attribute first.
        let rendered = parsed.tbs_certificate.subject.to_string();
        let mut subject = Subject::parse(&rendered)?;
        subject.0.reverse();
        Some(subject)
    }

    /// Whether `configured`, written in either order, names this subject.
    pub fn matches(&self, configured: &Subject) -> bool {
        self.0 == configured.0 || self.0.iter().eq(configured.0.iter().rev())
    }
}

impl fmt::Display for Subject {
    /// RFC 4514 order, as logs and errors show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for attribute in self.0.iter().rev() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_str(attribute)?;
        }
        Ok(())
    }
}

/// Splits on `separator` where it is not escaped by a backslash.
fn split_unescaped(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (index, character) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if character == '\\' {
            escaped = true;
        } else if character == separator {
            parts.push(&text[start..index]);
            start = index + character.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_orders_and_any_spacing_name_the_same_subject() {
        let certificate_order = Subject::parse("C = US, O = Example, CN = alice").unwrap();
        let rfc_order = Subject::parse("cn=alice,o=Example,c=US").unwrap();
        assert!(certificate_order.matches(&rfc_order));
        assert!(rfc_order.matches(&certificate_order));
        assert_eq!(certificate_order.to_string(), "CN=alice,O=Example,C=US");
    }

    #[test]
    fn values_compare_exactly_and_escaped_commas_stay_in_their_value() {
        let alice = Subject::parse("CN=alice,O=Example").unwrap();
        assert!(!alice.matches(&Subject::parse("CN=Alice,O=Example").unwrap()));
        assert!(!alice.matches(&Subject::parse("CN=alice").unwrap()));
        assert!(!alice.matches(&Subject::parse("CN=alice,O=Example,C=US").unwrap()));
        let escaped = Subject::parse(r"CN=Doe\, Jane,O=Example").unwrap();
        assert_eq!(escaped.0, vec![r"CN=Doe\, Jane", "O=Example"]);
    }

    #[test]
    fn text_without_attributes_is_no_subject() {
        for text in ["", "alice", "CN=", "=alice", "CN=alice,,O=x", " , "] {
            assert!(Subject::parse(text).is_none(), "{text:?}");
        }
    }

    #[test]
    fn a_certificate_subject_reads_in_certificate_order() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let subject = Subject::of_certificate(certificate.der()).unwrap();
        assert!(subject.matches(&Subject::parse("O=Example, CN=alice").unwrap()));
        assert!(subject.matches(&Subject::parse("CN=alice,O=Example").unwrap()));
        assert!(!subject.matches(&Subject::parse("CN=bob,O=Example").unwrap()));
    }
}

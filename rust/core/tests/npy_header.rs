//! `.npy` header encoding and decoding: a proptest round trip and a corpus checked by hand
//! against `np.save` output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lazy_disk_cache_core::npy::{MAX_HEADER_LEN, NPY_DATA_ALIGN, decode_header, encode_header};
use proptest::prelude::*;

/// Builds a header the way `np.save` lays it out (format 1.0, padded with spaces to a multiple
/// of 64, ending in a newline), from the dict text `np.save` printed.
fn numpy_layout(dict: &str) -> Vec<u8> {
    let total = (10 + dict.len() + 1).next_multiple_of(64);
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&u16::try_from(total - 10).unwrap().to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

/// (dict text printed by `np.save`, file length, descr, `fortran_order`, shape)
const CORPUS: [(&str, u64, &str, bool, &[u64]); 6] = [
    (
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }",
        176,
        "'<f8'",
        false,
        &[2, 3],
    ),
    (
        "{'descr': '<i4', 'fortran_order': False, 'shape': (5,), }",
        148,
        "'<i4'",
        false,
        &[5],
    ),
    (
        "{'descr': [('x', '<f8'), ('cls', '|u1')], 'fortran_order': False, 'shape': (2,), }",
        146,
        "[('x', '<f8'), ('cls', '|u1')]",
        false,
        &[2],
    ),
    (
        "{'descr': '>i4', 'fortran_order': False, 'shape': (), }",
        132,
        "'>i4'",
        false,
        &[],
    ),
    (
        "{'descr': '|b1', 'fortran_order': True, 'shape': (2, 2), }",
        132,
        "'|b1'",
        true,
        &[2, 2],
    ),
    (
        "{'descr': '<U3', 'fortran_order': False, 'shape': (0, 4), }",
        128,
        "'<U3'",
        false,
        &[0, 4],
    ),
];

#[test]
fn numpy_saved_headers_decode_to_the_values_numpy_wrote() {
    for (dict, file_len, descr, fortran_order, shape) in CORPUS {
        let bytes = numpy_layout(dict);

        let header = decode_header(&bytes, file_len).unwrap();

        assert_eq!(header.descr, descr);
        assert_eq!(header.fortran_order, fortran_order);
        assert_eq!(header.shape, shape);
        assert_eq!(header.data_offset, 128, "np.save puts data at byte 128");
        assert_eq!(header.version, (1, 0));
    }
}

#[test]
fn zero_byte_payload_header_is_byte_identical_to_numpy() {
    let (dict, _, descr, fortran_order, shape) = CORPUS[5];

    let encoded = encode_header(descr, fortran_order, shape, 0).unwrap();

    assert_eq!(encoded, numpy_layout(dict));
}

#[test]
fn non_empty_payload_starts_at_4096() {
    let encoded = encode_header("'<f8'", false, &[2, 3], 48).unwrap();

    assert_eq!(encoded.len() as u64, NPY_DATA_ALIGN);
    assert_eq!(&encoded[..8], b"\x93NUMPY\x01\x00");
    assert_eq!(u16::from_le_bytes([encoded[8], encoded[9]]), 4086);
    assert_eq!(encoded.last(), Some(&b'\n'));
    let text = std::str::from_utf8(&encoded[10..]).unwrap();
    assert!(text.starts_with("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }"));
}

#[test]
fn dict_too_long_for_a_page_falls_back_to_64_byte_alignment() {
    let fields: Vec<String> = (0..400).map(|index| format!("('field{index}', '<f8')")).collect();
    let descr = format!("[{}]", fields.join(", "));

    let encoded = encode_header(&descr, false, &[1], 3200).unwrap();

    assert!(encoded.len() > 4096);
    assert_eq!(encoded.len() % 64, 0);
    let header = decode_header(&encoded, encoded.len() as u64 + 3200).unwrap();
    assert_eq!(header.descr, descr);
}

#[test]
fn header_longer_than_u16_uses_format_2() {
    let fields: Vec<String> = (0..4000).map(|index| format!("('field{index}', '<f8')")).collect();
    let descr = format!("[{}]", fields.join(", "));

    let encoded = encode_header(&descr, false, &[1], 32000).unwrap();

    assert_eq!(&encoded[6..8], b"\x02\x00");
    let header = decode_header(&encoded, encoded.len() as u64 + 32000).unwrap();
    assert_eq!((header.version, header.data_offset), ((2, 0), encoded.len() as u64));
}

#[test]
fn non_latin1_descr_uses_format_3() {
    let descr = "[('θ', '<f4')]";

    let encoded = encode_header(descr, false, &[3], 12).unwrap();

    assert_eq!(&encoded[6..8], b"\x03\x00");
    assert_eq!(decode_header(&encoded, 4096 + 12).unwrap().descr, descr);
}

#[test]
fn decoder_accepts_any_key_order_quotes_whitespace_and_long_suffix() {
    let bytes = numpy_layout("{ \"shape\" : (2L, 3L) ,\n'fortran_order':True,  'descr':\"<f8\"}");

    let header = decode_header(&bytes, 128 + 48).unwrap();

    assert_eq!(
        (header.descr.as_str(), header.fortran_order, header.shape.as_slice()),
        ("\"<f8\"", true, &[2, 3][..])
    );
}

#[test]
fn decoder_rejects_malformed_headers_with_a_reason() {
    let cases = [
        ("{'descr': '<f8', 'fortran_order': False}", "keys"),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), 'extra': 1}",
            "unexpected key",
        ),
        ("{'descr': '<f8', 'fortran_order': 0, 'shape': (2,)}", "fortran_order"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': [2]}", "tuple"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (-2,)}", "dimension"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (2.5,)}", "integer"),
        ("{'descr': 3, 'fortran_order': False, 'shape': (2,)}", "descr"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (2,)} junk", "after"),
        ("{'descr': '<f8", "unterminated"),
        ("['descr']", "dict"),
    ];
    for (dict, reason) in cases {
        let err = decode_header(&numpy_layout(dict), 1 << 20).expect_err(dict);
        assert!(err.to_string().contains(reason), "{dict}: {err}");
    }
}

#[test]
fn decoder_rejects_bad_magic_versions_and_absurd_lengths() {
    assert!(
        decode_header(b"NOTNUMPY\x01\x00", 100)
            .unwrap_err()
            .to_string()
            .contains("magic")
    );
    assert!(
        decode_header(b"\x93NUMPY\x04\x00\x10\x00", 100)
            .unwrap_err()
            .to_string()
            .contains("version")
    );
    let mut huge = b"\x93NUMPY\x02\x00".to_vec();
    huge.extend_from_slice(&u32::try_from(MAX_HEADER_LEN + 1).unwrap().to_le_bytes());
    assert!(
        decode_header(&huge, u64::MAX)
            .unwrap_err()
            .to_string()
            .contains("exceeds")
    );
}

#[test]
fn decoder_rejects_a_header_longer_than_the_file() {
    let bytes = numpy_layout("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }");

    assert!(
        decode_header(&bytes, 100)
            .unwrap_err()
            .to_string()
            .contains("file holds 100")
    );
}

#[test]
fn encoder_refuses_a_descr_that_is_not_one_literal() {
    assert!(encode_header("'<f8', 'shape': (1,)", false, &[1], 8).is_err());
    assert!(encode_header("'<f8", false, &[1], 8).is_err());
}

fn descr_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("'<f8'".to_owned()),
        Just("'|u1'".to_owned()),
        Just("'>i2'".to_owned()),
        Just("'<U7'".to_owned()),
        "[a-z]{1,12}".prop_map(|name| format!("[('{name}', '<f4'), ('n', '<i8', (2, 3))]")),
    ]
}

proptest! {
    #[test]
    fn encoded_headers_decode_to_the_same_values(
        descr in descr_strategy(),
        fortran_order in any::<bool>(),
        shape in proptest::collection::vec(0u64..1 << 40, 0..6),
        payload_len in prop_oneof![Just(0u64), 1u64..1 << 40],
    ) {
        let encoded = encode_header(&descr, fortran_order, &shape, payload_len).unwrap();
        let file_len = encoded.len() as u64 + payload_len;

        let header = decode_header(&encoded, file_len).unwrap();

        prop_assert_eq!(&header.descr, &descr);
        prop_assert_eq!(header.fortran_order, fortran_order);
        prop_assert_eq!(&header.shape, &shape);
        prop_assert_eq!(header.data_offset, encoded.len() as u64);
        prop_assert_eq!(header.data_offset % 64, 0);
        if payload_len > 0 {
            prop_assert_eq!(header.data_offset, NPY_DATA_ALIGN);
        }
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut input = b"\x93NUMPY\x01\x00".to_vec();
        input.extend_from_slice(&bytes);
        let _ = decode_header(&input, 1 << 20);
    }
}

package server

import (
	"encoding/json"
	"errors"
	"maps"
	"strings"
	"testing"
)

func TestSecretDataRoundTrip(t *testing.T) {
	cases := []map[string]string{
		{"value": "12345"},
		{"a": "", "b": strings.Repeat("x", 300), "ünïcode": "✓ \x00 \"quoted\" {json}"},
		{"k": strings.Repeat("y", 1<<16)},
	}
	for _, data := range cases {
		b := encodeData(data)
		if b[0] != dataFormatBinary {
			t.Fatalf("encoded form starts with %#x, want %#x", b[0], dataFormatBinary)
		}
		got, err := decodeData(b)
		if err != nil {
			t.Fatalf("decode %d keys: %v", len(data), err)
		}
		if !maps.Equal(got, data) {
			t.Fatalf("round trip of %d keys changed the data", len(data))
		}
	}
}

func TestSecretDataDeterministic(t *testing.T) {
	data := map[string]string{}
	for i := range 50 {
		data[strings.Repeat("k", i+1)] = strings.Repeat("v", 50-i)
	}
	first := string(encodeData(data))
	for range 20 { // map iteration order differs from run to run
		if string(encodeData(data)) != first {
			t.Fatal("equal data encoded differently")
		}
	}
}

// Versions written before the binary form are JSON and must stay readable.
func TestSecretDataReadsJSON(t *testing.T) {
	data := map[string]string{"user": "admin", "password": "hunter2"}
	legacy, err := json.Marshal(data)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeData(legacy)
	if err != nil {
		t.Fatalf("decode JSON: %v", err)
	}
	if !maps.Equal(got, data) {
		t.Fatalf("JSON decoded to %v", got)
	}
}

func TestSecretDataMalformed(t *testing.T) {
	valid := encodeData(map[string]string{"a": "secret-one", "b": "secret-two"})
	cases := map[string][]byte{
		"empty":          {},
		"unknown format": append([]byte{0x02}, valid[1:]...),
		"truncated":      valid[:len(valid)-3],
		"trailing bytes": append(append([]byte{}, valid...), 0),
		"count too big":  {dataFormatBinary, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 'a', 1, 'b'},
		"field too long": {dataFormatBinary, 1, 0x7f, 'a'},
		"duplicate key":  {dataFormatBinary, 2, 1, 'a', 1, 'x', 1, 'a', 1, 'y'},
		"bad varint":     {dataFormatBinary, 0x80},
		"bad JSON":       []byte(`{"a": `),
	}
	for name, b := range cases {
		_, err := decodeData(b)
		if err == nil {
			t.Errorf("%s: decoded without error", name)
			continue
		}
		if strings.Contains(err.Error(), "secret-one") || strings.Contains(err.Error(), "secret-two") {
			t.Errorf("%s: error shows the plaintext: %v", name, err)
		}
		if name != "bad JSON" && !errors.Is(err, errBadData) {
			t.Errorf("%s: error %v, want errBadData", name, err)
		}
	}
}

// FuzzDecodeData: a stored plaintext never panics the decoder, and whatever
// decodes encodes back to data that decodes the same.
func FuzzDecodeData(f *testing.F) {
	f.Add(encodeData(map[string]string{"value": "12345"}))
	f.Add(encodeData(map[string]string{"a": "", "b": "c"}))
	f.Add([]byte(`{"value":"12345"}`))
	f.Add([]byte{dataFormatBinary, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		data, err := decodeData(b)
		if err != nil {
			return
		}
		again, err := decodeData(encodeData(data))
		if err != nil {
			t.Fatalf("re-encoded data does not decode: %v", err)
		}
		if !maps.Equal(again, data) {
			t.Fatal("re-encoded data decodes differently")
		}
	})
}

func BenchmarkDecodeData(b *testing.B) {
	data := map[string]string{"value": strings.Repeat("s", 256)}
	binaryForm := encodeData(data)
	jsonForm, err := json.Marshal(data)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		in   []byte
	}{{"binary", binaryForm}, {"json", jsonForm}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := decodeData(bc.in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

package mqttc

import (
	"bytes"
	"strings"
	"testing"
)

func TestVarint(t *testing.T) {
	cases := []struct {
		n    int
		want []byte
	}{
		{0, []byte{0x00}},
		{127, []byte{0x7f}},
		{128, []byte{0x80, 0x01}},
		{16383, []byte{0xff, 0x7f}},
		{16384, []byte{0x80, 0x80, 0x01}},
		{2097151, []byte{0xff, 0xff, 0x7f}},
		{2097152, []byte{0x80, 0x80, 0x80, 0x01}},
		{268435455, []byte{0xff, 0xff, 0xff, 0x7f}},
	}
	for _, c := range cases {
		got, err := AppendVarint(nil, c.n)
		if err != nil || !bytes.Equal(got, c.want) {
			t.Errorf("AppendVarint(%d) = %x, %v; want %x", c.n, got, err, c.want)
		}
		n, used, err := decodeVarint(append(c.want, 0xaa))
		if err != nil || n != c.n || used != len(c.want) {
			t.Errorf("decodeVarint(%x) = %d, %d, %v", c.want, n, used, err)
		}
		if n, used, err := decodeVarint(c.want[:len(c.want)-1]); used != 0 || err != nil {
			t.Errorf("decodeVarint(%x) (short) = %d, %d, %v; want incomplete", c.want[:len(c.want)-1], n, used, err)
		}
	}
	for _, n := range []int{-1, 268435456} {
		if _, err := AppendVarint(nil, n); err == nil {
			t.Errorf("AppendVarint(%d): no error", n)
		}
	}
	if _, _, err := decodeVarint([]byte{0xff, 0xff, 0xff, 0xff, 0x01}); err == nil {
		t.Error("decodeVarint of five bytes: no error")
	}
}

func TestStrings(t *testing.T) {
	b, err := appendString(nil, strings.Repeat("x", 65535))
	if err != nil || len(b) != 65537 || b[0] != 0xff || b[1] != 0xff {
		t.Fatalf("65535 bytes: len %d, %v", len(b), err)
	}
	if _, err := appendString(nil, strings.Repeat("x", 65536)); err == nil {
		t.Fatal("65536 bytes: no error")
	}
	s, rest, err := readString([]byte{0, 2, 'h', 0xff, 9})
	if err != nil || s != "h\xff" || !bytes.Equal(rest, []byte{9}) {
		t.Fatalf("readString = %q, %x, %v", s, rest, err)
	}
	if _, _, err := readString([]byte{0, 3, 'a'}); err == nil {
		t.Fatal("readString short: no error")
	}
}

func TestEncodeConnect(t *testing.T) {
	user, pass := "u", "p\x00"
	o := Options{ClientID: "id", KeepAlive: 60, Version: 4}
	got, err := encodeConnect(&o)
	want := []byte{0x10, 14, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 2, 'i', 'd'}
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("3.1.1 plain:\n got %x %v\nwant %x", got, err, want)
	}

	o = Options{ClientID: "", KeepAlive: 10, Version: 5, Persistent: true,
		Username: &user, Password: &pass, Will: &Will{Topic: "w", Payload: []byte{1, 2}}}
	got, err = encodeConnect(&o)
	want = []byte{0x10, 28, 0, 4, 'M', 'Q', 'T', 'T', 5, 0xc4, 0, 10, 0, // props
		0, 0, // client id
		0, 0, 1, 'w', 0, 2, 1, 2, // will props, topic, payload
		0, 1, 'u', 0, 2, 'p', 0}
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("5 full:\n got %x %v\nwant %x", got, err, want)
	}

	long := strings.Repeat("c", 20000)
	got, err = encodeConnect(&Options{ClientID: long, KeepAlive: 60, Version: 4})
	if err != nil || !bytes.Equal(got[:4], []byte{0x10, 0xac, 0x9c, 0x01}) { // 20012
		t.Fatalf("20000-byte id: %x %v", got[:4], err)
	}
	for _, o := range []Options{
		{ClientID: strings.Repeat("c", 70000)},
		{Username: &long, Password: func() *string { s := strings.Repeat("p", 65536); return &s }()},
		{Will: &Will{Topic: "t", Payload: make([]byte, 65536)}},
	} {
		o.Version = 4
		if _, err := encodeConnect(&o); err == nil {
			t.Errorf("oversized string accepted")
		}
	}
}

func TestParseConnack(t *testing.T) {
	if code, err := parseConnack([]byte{0, 5}, 4); err != nil || code != 5 {
		t.Errorf("3.1.1: %d %v", code, err)
	}
	// MQTT 5 with a property set: topic alias maximum 10, reason string "no".
	body := []byte{1, 0x87, 8, 0x22, 0, 10, 0x1f, 0, 2, 'n', 'o'}
	if code, err := parseConnack(body, 5); err != nil || code != 0x87 {
		t.Errorf("5: %x %v", code, err)
	}
	if _, err := parseConnack([]byte{0, 0, 9, 1}, 5); err == nil {
		t.Error("5 with truncated properties: no error")
	}
	if _, err := parseConnack([]byte{0}, 4); err == nil {
		t.Error("short: no error")
	}
}

func TestSubscribeSuback(t *testing.T) {
	got, err := encodeSubscribe(7, "a/#", 1, 4)
	want := []byte{0x82, 8, 0, 7, 0, 3, 'a', '/', '#', 1}
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("3.1.1:\n got %x %v\nwant %x", got, err, want)
	}
	got, err = encodeSubscribe(0x0102, "t", 0, 5)
	want = []byte{0x82, 7, 1, 2, 0, 0, 1, 't', 0}
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("5:\n got %x %v\nwant %x", got, err, want)
	}
	if id, code, err := parseSuback([]byte{0, 7, 0x80}, 4); err != nil || id != 7 || code != 0x80 {
		t.Errorf("3.1.1 suback: %d %x %v", id, code, err)
	}
	if id, code, err := parseSuback([]byte{0, 7, 3, 0x1f, 0, 0, 0x87}, 5); err != nil || id != 7 || code != 0x87 {
		t.Errorf("5 suback: %d %x %v", id, code, err)
	}
	if _, _, err := parseSuback([]byte{0, 7, 0}, 5); err == nil {
		t.Error("5 suback without codes: no error")
	}
}

func TestPublish(t *testing.T) {
	got, err := encodePublish("t/1", []byte("hi"), 4)
	want := []byte{0x30, 7, 0, 3, 't', '/', '1', 'h', 'i'}
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("3.1.1:\n got %x %v\nwant %x", got, err, want)
	}
	got, err = encodePublish("t", nil, 5)
	want = []byte{0x30, 4, 0, 1, 't', 0}
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("5:\n got %x %v\nwant %x", got, err, want)
	}
	if _, err := encodePublish(strings.Repeat("t", 65536), nil, 4); err == nil {
		t.Fatal("oversized topic accepted")
	}

	// QoS 1, MQTT 5, with a payload format indicator property.
	topic, payload, qos, id, err := parsePublish(0x32, []byte{0, 1, 'x', 0, 9, 2, 0x01, 1, 'p'}, 5)
	if err != nil || topic != "x" || string(payload) != "p" || qos != 1 || id != 9 {
		t.Fatalf("parsePublish = %q %q %d %d %v", topic, payload, qos, id, err)
	}
	topic, payload, qos, _, err = parsePublish(0x30, []byte{0, 1, 'x'}, 4)
	if err != nil || topic != "x" || len(payload) != 0 || qos != 0 {
		t.Fatalf("parsePublish empty = %q %q %d %v", topic, payload, qos, err)
	}
	if _, _, _, _, err := parsePublish(0x32, []byte{0, 1, 'x', 0}, 4); err == nil {
		t.Fatal("QoS 1 without id: no error")
	}
}

func TestSplitPacket(t *testing.T) {
	stream := []byte{0xd0, 0, 0x30, 0x80, 0x01}
	stream = append(stream, make([]byte, 128)...)
	first, body, n, err := splitPacket(stream)
	if err != nil || first != 0xd0 || len(body) != 0 || n != 2 {
		t.Fatalf("pingresp: %x %d %d %v", first, len(body), n, err)
	}
	if _, _, n, err := splitPacket(stream[2 : len(stream)-1]); n != 0 || err != nil {
		t.Fatalf("incomplete: %d %v", n, err)
	}
	first, body, n, err = splitPacket(stream[2:])
	if err != nil || first != 0x30 || len(body) != 128 || n != 131 {
		t.Fatalf("publish: %x %d %d %v", first, len(body), n, err)
	}
	if _, _, _, err := splitPacket([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}); err == nil {
		t.Fatal("five-byte length: no error")
	}
}

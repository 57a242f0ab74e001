package mqttc_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

func dial(t *testing.T, o mqttc.Options) *mqttc.Conn {
	t.Helper()
	c, code, err := mqttc.Dial(ctx(t), o)
	if err != nil || code != 0 {
		t.Fatalf("Dial %q: code 0x%02x, %v", o.ClientID, code, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestBroker(t *testing.T) {
	t.Parallel()
	m := testenv.StartMosquitto(t, "allow_anonymous true\n")
	for _, v := range []int{4, 5} {
		t.Run(map[int]string{4: "v311", 5: "v5"}[v], func(t *testing.T) {
			sub := dial(t, mqttc.Options{Addr: m.Addr, ClientID: "sub", Version: v})
			if err := sub.Ping(ctx(t)); err != nil {
				t.Fatalf("Ping: %v", err)
			}
			topic := "t/" + t.Name()
			if err := sub.Subscribe(ctx(t), topic, 0); err != nil {
				t.Fatalf("Subscribe: %v", err)
			}
			pub := dial(t, mqttc.Options{Addr: m.Addr, ClientID: "pub", Version: v})
			for i, p := range []string{"one", "two"} {
				if err := pub.Publish(ctx(t), topic, []byte(p)); err != nil {
					t.Fatalf("Publish: %v", err)
				}
				if i == 0 {
					continue
				}
				// The ping answer may come after the messages: Next still has them.
				if err := sub.Ping(ctx(t)); err != nil {
					t.Fatalf("Ping: %v", err)
				}
			}
			for _, want := range []string{"one", "two"} {
				gotTopic, payload, err := sub.Next(ctx(t))
				if err != nil || gotTopic != topic || string(payload) != want {
					t.Fatalf("Next = %q %q %v; want %q %q", gotTopic, payload, err, topic, want)
				}
			}
			if err := pub.Disconnect(); err != nil {
				t.Errorf("Disconnect: %v", err)
			}
		})
	}
	t.Run("qos1", func(t *testing.T) {
		sub := dial(t, mqttc.Options{Addr: m.Addr, ClientID: "sub1", Version: 5})
		if err := sub.Subscribe(ctx(t), "q1", 1); err != nil {
			t.Fatal(err)
		}
		pub := dial(t, mqttc.Options{Addr: m.Addr, ClientID: "pub1"})
		for _, p := range []string{"a", "b"} {
			if err := pub.Publish(ctx(t), "q1", []byte(p)); err != nil {
				t.Fatal(err)
			}
			if _, payload, err := sub.Next(ctx(t)); err != nil || string(payload) != p {
				t.Fatalf("Next = %q %v", payload, err)
			}
		}
	})
}

func TestSourceIP(t *testing.T) {
	t.Parallel()
	m := testenv.StartMosquitto(t, "allow_anonymous true\n")
	c := dial(t, mqttc.Options{Addr: m.Addr, SourceIP: "127.0.0.23", ClientID: "from23"})
	if got := c.LocalAddr().String(); !strings.HasPrefix(got, "127.0.0.23:") {
		t.Errorf("LocalAddr = %s", got)
	}
	if !m.WaitOutput("New client connected from 127.0.0.23:", 5*time.Second) {
		t.Fatal("mosquitto did not log the connection from 127.0.0.23")
	}
}

func TestRefused(t *testing.T) {
	t.Parallel()
	m := testenv.StartMosquitto(t, "allow_anonymous false\n")
	c, code, err := mqttc.Dial(ctx(t), mqttc.Options{Addr: m.Addr, ClientID: "anon"})
	if c != nil || err != nil || code != 5 {
		t.Errorf("3.1.1: conn %v, code %d, err %v; want code 5", c, code, err)
	}
	c, code, err = mqttc.Dial(ctx(t), mqttc.Options{Addr: m.Addr, ClientID: "anon5", Version: 5})
	if c != nil || err != nil || (code != 0x87 && code != 0x86) {
		t.Errorf("5: conn %v, code 0x%02x, err %v; want 0x87 or 0x86", c, code, err)
	}
}

func TestHostileClientID(t *testing.T) {
	t.Parallel()
	m := testenv.StartMosquitto(t, "allow_anonymous true\n")
	// Two 20 000-byte ids differing in their last byte are two clients: the
	// broker kept the whole id. Reusing the first takes its session over.
	prefix := strings.Repeat("x", 19999)
	first := dial(t, mqttc.Options{Addr: m.Addr, ClientID: prefix + "!"})
	second := dial(t, mqttc.Options{Addr: m.Addr, ClientID: prefix + "?", Version: 5})
	for _, c := range []*mqttc.Conn{first, second} {
		if err := c.Ping(ctx(t)); err != nil {
			t.Fatalf("Ping: %v", err)
		}
	}
	dial(t, mqttc.Options{Addr: m.Addr, ClientID: prefix + "!"})
	if !first.Closed(5 * time.Second) {
		t.Error("the first client was not taken over")
	}
	if err := second.Ping(ctx(t)); err != nil {
		t.Errorf("the second client: %v", err)
	}

	// Not UTF-8: mosquitto drops the connection without a CONNACK.
	for _, v := range []int{4, 5} {
		_, code, err := mqttc.Dial(ctx(t), mqttc.Options{Addr: m.Addr, ClientID: "bad\xff\x00", Version: v})
		if !errors.Is(err, mqttc.ErrNoConnack) {
			t.Errorf("v%d invalid UTF-8 id: code %d, err %v; want ErrNoConnack", v, code, err)
		}
	}
}

func TestWillAndClosed(t *testing.T) {
	t.Parallel()
	m := testenv.StartMosquitto(t, "allow_anonymous true\n")
	for _, v := range []int{4, 5} {
		sub := dial(t, mqttc.Options{Addr: m.Addr, ClientID: "watcher", Version: v})
		if err := sub.Subscribe(ctx(t), "will/#", 0); err != nil {
			t.Fatal(err)
		}
		c := dial(t, mqttc.Options{Addr: m.Addr, ClientID: "mortal", Version: v,
			Will: &mqttc.Will{Topic: "will/mortal", Payload: []byte("gone")}})
		if err := c.Ping(ctx(t)); err != nil {
			t.Fatal(err)
		}
		c.Close()
		topic, payload, err := sub.Next(ctx(t))
		if err != nil || topic != "will/mortal" || string(payload) != "gone" {
			t.Fatalf("v%d will: %q %q %v", v, topic, payload, err)
		}

		// Taking over the client id makes the broker close the first connection.
		if sub.Closed(50 * time.Millisecond) {
			t.Fatal("Closed before the takeover")
		}
		dial(t, mqttc.Options{Addr: m.Addr, ClientID: "watcher", Version: v})
		if !sub.Closed(5 * time.Second) {
			t.Fatalf("v%d: Closed: false after a client id takeover", v)
		}
	}
}

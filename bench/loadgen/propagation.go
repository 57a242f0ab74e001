package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
)

// BanResult is the JSON line of `loadgen propagation` and `loadgen kick`.
type BanResult struct {
	Cmd         string   `json:"cmd"`
	Label       string   `json:"label"`
	Trials      int      `json:"trials"`
	Done        int      `json:"done"`     // trials that ended in a refusal (propagation) or a close (kick)
	Timeouts    int      `json:"timeouts"` // trials where that did not happen within -trial-timeout
	Implemented bool     `json:"implemented"`
	P50         *float64 `json:"p50_ms"`
	P99         *float64 `json:"p99_ms"`
	Max         *float64 `json:"max_ms"`
	Note        string   `json:"note,omitempty"`
	Errors      []string `json:"errors,omitempty"`
}

type banFlags struct {
	addr, redisAddr, prefix, user, pass, src, label string
	trials                                          int
	trialTimeout, maxDuration                       time.Duration
}

func parseBanFlags(name string, args []string, trials int) (*banFlags, error) {
	f := &banFlags{}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.StringVar(&f.addr, "addr", "", "broker host:port")
	fs.StringVar(&f.redisAddr, "redis", "", "Redis host:port the plugin uses")
	fs.StringVar(&f.prefix, "key-prefix", "guard:", "the plugin's key_prefix")
	fs.StringVar(&f.user, "user", "", "username")
	fs.StringVar(&f.pass, "pass", "", "password")
	fs.StringVar(&f.src, "src", "127.3.0.0/16", "source addresses, taken in turn")
	fs.StringVar(&f.label, "label", name, "label, echoed")
	fs.IntVar(&f.trials, "trials", trials, "number of trials")
	fs.DurationVar(&f.trialTimeout, "trial-timeout", 3*time.Second, "bound on one trial")
	fs.DurationVar(&f.maxDuration, "max-duration", 90*time.Second, "bound on the whole run")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if f.addr == "" || f.redisAddr == "" || f.trials < 1 || f.trials > 10000 {
		return nil, fmt.Errorf("need -addr, -redis and 1 <= -trials <= 10000")
	}
	return f, nil
}

func (f *banFlags) redis() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: f.redisAddr, DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second})
}

func (f *banFlags) creds() (user, pass *string) {
	if f.user == "" {
		return nil, nil
	}
	return &f.user, &f.pass
}

func finish(res *BanResult, lat []time.Duration) error {
	res.P50, res.P99, res.Max = latencyStats(lat)
	return emit(res)
}

// cmdPropagation: a client reconnects in a loop with one client ID; the ID
// is banned with SET; the time from the SET to the first refused CONNACK.
func cmdPropagation(args []string) error {
	f, err := parseBanFlags("propagation", args, 50)
	if err != nil {
		return err
	}
	raddr, err := net.ResolveTCPAddr("tcp", f.addr)
	if err != nil {
		return err
	}
	pool, err := newAddrPool(f.src)
	if err != nil {
		return err
	}
	rdb := f.redis()
	defer rdb.Close()
	ctx := context.Background()
	user, pass := f.creds()
	res := &BanResult{Cmd: "propagation", Label: f.label, Trials: f.trials, Implemented: true}
	var lat []time.Duration
	var nextIP atomic.Uint64
	runEnd := time.Now().Add(f.maxDuration)
	base := time.Now().UnixNano()
	for trial := 0; trial < f.trials && time.Now().Before(runEnd); trial++ {
		id := fmt.Sprintf("prop-%d-%d", base, trial)
		key := f.prefix + "block:clientid:" + id
		pkt := connectPacket(id, user, pass)
		type outcome struct {
			at   time.Time
			code byte
			err  error
		}
		var (
			firstOK = make(chan struct{})
			refused = make(chan outcome, 1)
			stop    atomic.Bool
		)
		deadline := time.Now().Add(f.trialTimeout + time.Second)
		// The reconnecting client.
		go func() {
			okSent := false
			for n := 0; n < 1_000_000 && !stop.Load() && time.Now().Before(deadline); n++ {
				code, _, err := attempt(pool.tcpAddr(nextIP.Add(1)), raddr, pkt, time.Second)
				if err == nil && code == 0 {
					if !okSent {
						okSent = true
						close(firstOK)
					}
					continue
				}
				if !okSent {
					// Refused before the ban: the scenario itself is broken.
					refused <- outcome{time.Now(), code, err}
					return
				}
				if err != nil {
					time.Sleep(time.Millisecond)
					continue
				}
				refused <- outcome{at: time.Now(), code: code}
				return
			}
		}()
		select {
		case <-firstOK:
		case o := <-refused:
			stop.Store(true)
			return fmt.Errorf("trial %d: client refused before the ban (code %d, err %v)", trial, o.code, o.err)
		case <-time.After(f.trialTimeout):
			stop.Store(true)
			return fmt.Errorf("trial %d: client not accepted within %s", trial, f.trialTimeout)
		}
		// Ban at a random point of the reconnect cycle.
		time.Sleep(time.Duration(rand.IntN(5000)) * time.Microsecond)
		t0 := time.Now()
		if err := rdb.Set(ctx, key, "bench propagation", 5*time.Minute).Err(); err != nil {
			stop.Store(true)
			return fmt.Errorf("SET %s: %w", key, err)
		}
		select {
		case o := <-refused:
			lat = append(lat, o.at.Sub(t0))
			res.Done++
		case <-time.After(f.trialTimeout):
			res.Timeouts++
		}
		stop.Store(true)
		_ = rdb.Del(ctx, key).Err()
	}
	if res.Done == 0 {
		res.Implemented = false
		res.Note = fmt.Sprintf("no refusal within %s of the SET", f.trialTimeout)
	}
	return finish(res, lat)
}

// cmdKick: a client connects and stays; its client ID is banned with SET;
// the time from the SET to the broker closing the connection.
func cmdKick(args []string) error {
	f, err := parseBanFlags("kick", args, 20)
	if err != nil {
		return err
	}
	pool, err := newAddrPool(f.src)
	if err != nil {
		return err
	}
	rdb := f.redis()
	defer rdb.Close()
	ctx := context.Background()
	user, pass := f.creds()
	res := &BanResult{Cmd: "kick", Label: f.label, Trials: f.trials, Implemented: true}
	var lat []time.Duration
	runEnd := time.Now().Add(f.maxDuration)
	base := time.Now().UnixNano()
	for trial := 0; trial < f.trials && time.Now().Before(runEnd); trial++ {
		id := fmt.Sprintf("kick-%d-%d", base, trial)
		key := f.prefix + "block:clientid:" + id
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, code, err := mqttc.Dial(dctx, mqttc.Options{
			Addr: f.addr, SourceIP: pool.tcpAddr(uint64(trial)).IP.String(), ClientID: id,
			Username: user, Password: pass,
		})
		if err == nil && code == 0 {
			err = conn.Ping(dctx) // the broker has handled CONNECT and is serving the client
		}
		cancel()
		if err != nil || code != 0 {
			if conn != nil {
				conn.Close()
			}
			return fmt.Errorf("trial %d: connect: code %d, %v", trial, code, err)
		}
		t0 := time.Now()
		if err := rdb.Set(ctx, key, "bench kick", 5*time.Minute).Err(); err != nil {
			conn.Close()
			return fmt.Errorf("SET %s: %w", key, err)
		}
		closed := conn.Closed(f.trialTimeout)
		t1 := time.Now()
		conn.Close()
		_ = rdb.Del(ctx, key).Err()
		if closed {
			lat = append(lat, t1.Sub(t0))
			res.Done++
		} else {
			res.Timeouts++
			if res.Done == 0 && res.Timeouts >= 2 {
				res.Implemented = false
				res.Note = fmt.Sprintf("not implemented: connection still open %s after the SET, in %d trials", f.trialTimeout, res.Timeouts)
				break
			}
		}
	}
	return finish(res, lat)
}

package store

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// Attack on 8036a2c: a pipeline with a large reply volume (the replica's
// reload: GET and PTTL of many keys with long values; a HGETALL of a large
// hash) through 32 KiB pipeline buffers against go-redis's 128 KiB, side by
// side (go test -run XXX -bench Atk13 ./store).
func BenchmarkAtk13PipelineBuffers(b *testing.B) {
	r := testenv.StartRedis(b)
	ctx := context.Background()
	seed := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer seed.Close()
	for _, size := range []int{200, 4 << 10} {
		p := seed.Pipeline()
		for i := 0; i < 1000; i++ {
			p.Set(ctx, fmt.Sprintf("k%d-%d", size, i), strings.Repeat("x", size), 0)
		}
		if _, err := p.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	h := make([]any, 0, 40000)
	for i := 0; i < 20000; i++ {
		h = append(h, fmt.Sprintf("field-%d", i), strings.Repeat("v", 40))
	}
	if err := seed.HSet(ctx, "bighash", h...).Err(); err != nil {
		b.Fatal(err)
	}
	for _, buf := range []int{32 << 10, 128 << 10} {
		c := redis.NewClient(&redis.Options{Addr: r.Addr, PipelineReadBufferSize: buf, PipelineWriteBufferSize: buf})
		for _, size := range []int{200, 4 << 10} {
			b.Run(fmt.Sprintf("get1000x%d/buf%dK", size, buf>>10), func(b *testing.B) {
				for b.Loop() {
					p := c.Pipeline()
					for i := 0; i < 1000; i++ {
						p.Get(ctx, fmt.Sprintf("k%d-%d", size, i))
						p.PTTL(ctx, fmt.Sprintf("k%d-%d", size, i))
					}
					if _, err := p.Exec(ctx); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		b.Run(fmt.Sprintf("hgetall20000/buf%dK", buf>>10), func(b *testing.B) {
			for b.Loop() {
				p := c.Pipeline()
				cmd := p.HGetAll(ctx, "bighash")
				if _, err := p.Exec(ctx); err != nil || len(cmd.Val()) != 20000 {
					b.Fatal(err, len(cmd.Val()))
				}
			}
		})
		_ = c.Close()
	}
}

// 8036a2c: requests and replies many times a pipeline connection's 32 KiB
// buffers, through the store's own clients (broker's and background):
// 4 MB values written and read back in one pipeline, with many small
// commands around them, within the store's timeouts.
func TestAtk13PipelineLargerThanItsBuffers(t *testing.T) {
	s, _ := newStore(t, "guard:")
	ctx := context.Background()
	big := strings.Repeat("r", 4<<20)
	for _, c := range []redis.UniversalClient{s.Client(), s.Background().Client()} {
		p := c.Pipeline()
		for i := 0; i < 2000; i++ {
			p.Set(ctx, fmt.Sprintf("small-%d", i), i, 0)
		}
		p.Set(ctx, "big", big, 0)
		p.Set(ctx, "big2", big, 0)
		_, err := p.Exec(ctx)
		require.NoError(t, err)
		p = c.Pipeline()
		var smalls []*redis.StringCmd
		for i := 0; i < 2000; i++ {
			smalls = append(smalls, p.Get(ctx, fmt.Sprintf("small-%d", i)))
		}
		g1, g2 := p.Get(ctx, "big"), p.Get(ctx, "big2")
		_, err = p.Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, big, g1.Val())
		require.Equal(t, big, g2.Val())
		for i, c := range smalls {
			require.Equal(t, fmt.Sprint(i), c.Val())
		}
	}
}

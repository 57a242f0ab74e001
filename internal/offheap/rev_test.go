package offheap

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// The table against a Go map under random puts, deletes, Clear, Rehash
// (to fewer than its entries too), Free and All with deletes and updates,
// for hashes that put every key at the last slot (one run that wraps, with
// tombstones across slot 0), at one of two slots, and spread. After every
// step all of check's invariants hold.
func TestRevTableModel(t *testing.T) {
	hashes := map[string]func(key) uint64{
		"one":    func(key) uint64 { return ^uint64(0) },
		"two":    func(k key) uint64 { return ^uint64(0) - k.a%2 },
		"spread": func(k key) uint64 { return k.a * 0x9e3779b97f4a7c15 },
	}
	for name, h := range hashes {
		t.Run(name, func(t *testing.T) {
			for seed := uint64(0); seed < 4; seed++ {
				rng := rand.New(rand.NewPCG(seed, 99))
				m := NewTable[key, val](h, key{0, 1})
				model := map[key]val{}
				keys := 150 // "one" probes the whole run: keep it small
				if name == "spread" {
					keys = 5000
				}
				pick := func() key { return key{a: uint64(rng.IntN(keys)) + 2, b: 7} }
				for step := 0; step < 6000; step++ {
					switch r := rng.IntN(100); {
					case r < 50:
						k, v := pick(), val{s: rng.Uint64()}
						m.Put(k, v)
						model[k] = v
					case r < 90:
						k := pick()
						m.Del(k)
						delete(model, k)
					case r < 93:
						for k, v := range m.All() {
							if rng.IntN(2) == 0 {
								m.Del(k)
								delete(model, k)
							} else {
								v.tag++
								m.Put(k, v)
								model[k] = v
							}
						}
					case r < 95:
						m.Rehash(rng.IntN(len(model) + 1))
					case r < 96:
						m.Clear()
						clear(model)
					case r < 97:
						m.Free()
						clear(model)
					default:
						k := pick()
						v, ok := m.Get(k)
						mv, mok := model[k]
						require.Equal(t, mok, ok)
						require.Equal(t, mv, v)
					}
					if step%50 == 0 {
						check(t, m, model)
					}
				}
				check(t, m, model)
				m.Free()
			}
		})
	}
}

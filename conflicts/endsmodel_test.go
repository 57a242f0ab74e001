package conflicts

// The batch's ends as the worker found them before pairBatch (three Go
// maps): the equivalence test's old writes (memo_equiv_test.go) still use
// them, so that TestMemosAsBefore holds pairBatch to them too.

// end is a connection that ends in a batch: the index of its disconnect,
// and whether no other connect of its client ID comes between its connect
// and its disconnect.
type end struct {
	at    int
	alone bool
}

// endsOf returns the connections that end in batch, by number, made once
// in *ends.
func endsOf(batch []event, ends *map[uint64]end) map[uint64]end {
	if *ends == nil {
		*ends = make(map[uint64]end, len(batch)/2)
		fillEnds(batch, *ends, make(map[string]uint64, len(batch)/2))
	}
	return *ends
}

// fillEnds records in ends the connections that end in batch, by number;
// open is a scratch map (client ID: its latest connect in batch, no other
// since), empty on entry.
func fillEnds(batch []event, ends map[uint64]end, open map[string]uint64) {
	for i, ev := range batch {
		switch ev.kind {
		case evConnect:
			open[ev.clientID] = ev.conn.Seq
		case evDisconnect:
			seq, ok := open[ev.clientID]
			alone := ok && seq == ev.conn.Seq
			if alone {
				delete(open, ev.clientID)
			}
			ends[ev.conn.Seq] = end{at: i, alone: alone}
		}
	}
}

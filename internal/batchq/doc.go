// Package batchq is a bounded queue between the broker thread and a
// goroutine that handles its items in batches, built so that the broker
// thread wakes that goroutine once per batch, not once per item.
//
// A buffered channel wakes its receiver at every send: a goroutine parked
// in a receive (or in a select that includes the channel) is made runnable
// by each item, and on a broker whose main thread is busy with CONNECTs that
// is a futex wake-up and a scheduler round per CONNECT. Here only the Put
// that finds the queue empty signals; the consumer then lingers (sleeps,
// deaf to further Puts) and takes what gathered in one go.
//
// Memory follows the backlog, not the bound: a channel of N slots holds N
// items' worth of memory from the start, and touches every slot as its
// ring turns; this queue grows to what waits, gives back all but one
// batch's worth once drained, and keeps at most keepMax items' worth once
// its load is light (Release) or its consumer idle (Trim).
package batchq

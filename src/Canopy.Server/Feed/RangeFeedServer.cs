// The server side of change feeds: the "rangefeed" RPC
// =====================================================
//
// A reader (the SDK's span watcher, docs/subscriptions.md) long-polls the leaseholder of a range for the committed
// versions of a span inside it:
//
//   request  { method: "rangefeed", key: span start, end_key: span end (null: the range's end, only for the last range),
//              from_timestamp: F (registration: versions above F), args: { cursor?, wait_ms?, want? }, limit }
//   answer   { events: [{ key, ts, value|null }], timestamp: resolved (absent while catching up or when cut short),
//              info: { cursor } }
//
// Without a cursor the reader registers: the answer is the first page of a catch-up scan of the engine (versions
// above F) and a cursor; later polls pass the previous cursor and get what the feed buffered since (RangeFeed). The
// answer waits up to wait_ms (default 50, at most 5,000) for something to report: it returns as soon as there are
// events (at least 5 ms after the poll arrived, so a stream of writes is batched) or the resolved timestamp reaches
// `want` (the reader's newest buffered event: it can then emit it), else at the deadline with a fresh resolved
// timestamp (the reader's heartbeat).
//
// Errors: NotLeaseholder (+hint) / RangeNotFound: ask the range's leaseholder, after refreshing the range cache (the
// span must lie in one range); FeedRestart: register again from the last resolved timestamp; Unavailable: retry.
//
// Resolved timestamps come from closing: every poll closes now − ClosedTimestampLag on the range (TxnReplica.
// CloseAndBound), lowered below writes in flight and, in the feed, below unresolved intents in the span. Intents older
// than 2 s that hold a resolved timestamp back get their transaction pushed (one push at a time per range), so an
// abandoned transaction (its coordinator crashed) stops holding subscribers back once its heartbeat expires.
namespace Canopy.Server;

using System.Collections.Concurrent;
using System.Globalization;
using Canopy.Clock;
using Canopy.Ranges;
using Canopy.Rpc;

public sealed partial class CanopyServer
{
    /// <summary>How long an intent may hold a feed's resolved timestamp back before its transaction is pushed.</summary>
    private static readonly TimeSpan FeedPushAfter = TimeSpan.FromSeconds(2);

    /// <summary>A feed nobody polled for this long stops decoding its range's writes.</summary>
    private static readonly TimeSpan FeedIdleAfter = TimeSpan.FromSeconds(30);

    private readonly ConcurrentDictionary<ulong, byte> _feedPushing = new();
    private long _feedSweepTicks;

    private async Task<RpcResponse> HandleRangeFeedAsync(RpcRequest request, CancellationToken ct)
    {
        var start = request.Key;
        if (start is null)
        {
            return RpcResponse.Fail(RpcErrorCode.BadRequest, "rangefeed needs a span start (key)");
        }

        var end = request.EndKey;
        string? cursor = null;
        var waitMs = 50;
        HlcTimestamp? want = null;
        if (request.Args is { } args)
        {
            args.TryGetValue("cursor", out cursor);
            if (args.TryGetValue("wait_ms", out var w) && int.TryParse(w, NumberStyles.None, CultureInfo.InvariantCulture, out var wm))
            {
                waitMs = Math.Clamp(wm, 0, 5000);
            }

            if (args.TryGetValue("want", out var wantText))
            {
                if (!HlcTimestamp.TryParse(wantText, out var wt))
                {
                    return RpcResponse.Fail(RpcErrorCode.BadRequest, $"bad timestamp '{wantText}' in want");
                }

                want = wt;
            }
        }

        var from = HlcTimestamp.Zero;
        if (cursor is null)
        {
            if (request.FromTimestamp is not { } f || !HlcTimestamp.TryParse(f, out from))
            {
                return RpcResponse.Fail(RpcErrorCode.BadRequest, "a rangefeed registration (no cursor) needs from_timestamp");
            }
        }

        var limit = request.Limit is > 0 and <= 20_000 ? request.Limit : 5_000;
        var (sm, error) = Locate(start);
        if (sm is null)
        {
            return error!;
        }

        var d = sm.Descriptor!;
        if (d.EndKey is { } rangeEnd && (end is null || end.AsSpan().SequenceCompareTo(rangeEnd) > 0))
        {
            return RpcResponse.Fail(RpcErrorCode.RangeNotFound, $"the span crosses the end of range {sm.RangeId} ({d}): refresh the range cache and split the span");
        }

        var arrived = DateTimeOffset.UtcNow;
        var deadline = arrived + TimeSpan.FromMilliseconds(waitMs);
        var earliest = arrived + TimeSpan.FromMilliseconds(Math.Min(5, waitMs));
        MaybeSweepFeeds(arrived);
        List<KvEvent> collected = [];
        while (true)
        {
            var (lease, now, leaseError) = await EnsureLeaseAsync(sm, ct);
            if (lease is null)
            {
                return leaseError!;
            }

            var wall = DateTimeOffset.UtcNow;
            sm.Feed.Activate(sm.Mvcc.Engine, d.StartKey, d.EndKey, wall);
            var changed = sm.Feed.Changed;
            var target = new HlcTimestamp(now.WallNanos - (long)(_options.ClosedTimestampLag.Ticks * 100), 0);
            var bound = Txn.CloseAndBound(sm, lease, target);
            var read = sm.Feed.Read(sm.Mvcc.Engine, start, end, from, cursor, bound, limit - collected.Count, wall);
            if (read.Status == FeedReadStatus.Restart)
            {
                return RpcResponse.Fail(RpcErrorCode.FeedRestart, $"the change feed of range {sm.RangeId} restarted here (lease moved, snapshot, or the reader fell behind): register again");
            }

            foreach (var e in read.Events)
            {
                collected.Add(new KvEvent(e.Key, e.Timestamp.ToString(), e.Value));
            }

            cursor = read.Cursor;
            if (read.Resolved is { } r && r < bound)
            {
                MaybePushFeedIntents(sm, start, end, now);
            }

            var done = read.Resolved is null // catching up, or cut short at the limit
                || (collected.Count > 0 && wall >= earliest)
                || (want is { } wnt && read.Resolved >= wnt)
                || wall >= deadline;
            if (done)
            {
                return new RpcResponse
                {
                    Events = collected,
                    Timestamp = read.Resolved?.ToString(),
                    Info = new() { ["cursor"] = cursor! },
                    Range = Info(sm),
                };
            }

            // Sleep until something may have changed: new versions, the resolved timestamp passing `want`, the
            // earliest moment to return what is collected, or the deadline.
            var sleep = (collected.Count > 0 ? earliest : deadline) - wall;
            if (want is { } wt2 && read.Resolved is { } res && res < wt2)
            {
                var untilWant = TimeSpan.FromTicks(Math.Max(0, (wt2.WallNanos - res.WallNanos) / 100)) + TimeSpan.FromMilliseconds(1);
                sleep = untilWant < sleep ? untilWant : sleep;
            }

            if (sleep > TimeSpan.Zero)
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
                var delay = Task.Delay(sleep, timeout.Token);
                await Task.WhenAny(changed, delay);
                await timeout.CancelAsync();
            }
        }
    }

    /// <summary>Pushes the transactions of old intents holding the span's resolved timestamp back (one push job per range).</summary>
    private void MaybePushFeedIntents(RangeStateMachine sm, byte[] start, byte[]? end, HlcTimestamp now)
    {
        var before = new HlcTimestamp(now.WallNanos - (long)(FeedPushAfter.Ticks * 100), 0);
        var old = sm.Feed.IntentsBefore(start, end, before);
        if (old.Count == 0 || !_feedPushing.TryAdd(sm.RangeId, 0))
        {
            return;
        }

        _ = Task.Run(async () =>
        {
            try
            {
                foreach (var (key, _, _) in old.Take(1000))
                {
                    // One push per key: the first finds out the transaction's fate (recovering it if abandoned),
                    // the others find its record final and just resolve their intent.
                    await Txn.PushForFeedAsync(sm, key, now, _stop.Token);
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or InvalidOperationException or IOException)
            {
                // best effort: the next poll tries again
            }
            finally
            {
                _feedPushing.TryRemove(sm.RangeId, out _);
            }
        });
    }

    /// <summary>At most every 10 s: feeds nobody polled for <see cref="FeedIdleAfter"/> stop decoding.</summary>
    private void MaybeSweepFeeds(DateTimeOffset now)
    {
        var last = Interlocked.Read(ref _feedSweepTicks);
        if (now.UtcTicks - last < TimeSpan.TicksPerSecond * 10 || Interlocked.CompareExchange(ref _feedSweepTicks, now.UtcTicks, last) != last)
        {
            return;
        }

        foreach (var m in _machines.All)
        {
            m.Feed.DeactivateIfIdle(now - FeedIdleAfter);
        }
    }
}

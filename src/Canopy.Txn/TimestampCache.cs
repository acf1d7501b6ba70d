using Canopy.Clock;
using Canopy.Storage;

namespace Canopy.Txn;

/// <summary>
/// The timestamp cache of one range at its leaseholder (txn-pitfalls 8): the highest timestamp at which each key (or
/// span) was read, so a later write below a served read is pushed above it. In memory only: a new leaseholder starts
/// it at its lease start (<see cref="Reset"/>), which lies after every read the previous leaseholder could serve.
/// Never goes backwards: when it grows past its capacity, the forgotten entries are folded into the low-water mark.
/// A transaction's own reads do not push its writes (its read timestamp never exceeds its write timestamp).
/// </summary>
public sealed class TimestampCache
{
    /// <summary>Point entries kept before folding into the low-water mark; ~100 B each.</summary>
    public const int PointCapacity = 200_000;

    /// <summary>Span entries kept before folding (a write checks every span, so few).</summary>
    public const int SpanCapacity = 2_000;

    private readonly object _gate = new();
    private readonly Dictionary<byte[], Entry> _points = new(ByteArrayComparer.Instance);
    private readonly List<(byte[] Start, byte[]? End, Entry Entry)> _spans = [];
    private HlcTimestamp _low;

    /// <summary>The low-water mark: every key counts as read at this timestamp.</summary>
    public HlcTimestamp LowWater
    {
        get
        {
            lock (_gate)
            {
                return _low;
            }
        }
    }

    /// <summary>Forgets every entry and starts at <paramref name="low"/> (a new lease: its start).</summary>
    public void Reset(HlcTimestamp low)
    {
        lock (_gate)
        {
            _points.Clear();
            _spans.Clear();
            _low = low;
        }
    }

    /// <summary>Raises the low-water mark to <paramref name="ts"/> (a closed timestamp): no write goes at or below it.</summary>
    public void AdvanceLowWater(HlcTimestamp ts)
    {
        lock (_gate)
        {
            if (ts > _low)
            {
                _low = ts;
            }
        }
    }

    /// <summary>Records a read of <paramref name="key"/> at <paramref name="ts"/> by <paramref name="txn"/> (Guid.Empty: not transactional).</summary>
    public void AddRead(byte[] key, HlcTimestamp ts, Guid txn)
    {
        lock (_gate)
        {
            if (ts <= _low)
            {
                return;
            }

            _points[key] = _points.TryGetValue(key, out var e) ? e.With(ts, txn) : new Entry(ts, txn, HlcTimestamp.Zero);
            if (_points.Count > PointCapacity)
            {
                Fold();
            }
        }
    }

    /// <summary>Records a read of the keys in [<paramref name="start"/>, <paramref name="end"/>) (null: to the end).</summary>
    public void AddSpan(byte[] start, byte[]? end, HlcTimestamp ts, Guid txn)
    {
        lock (_gate)
        {
            if (ts <= _low)
            {
                return;
            }

            _spans.Add((start, end, new Entry(ts, txn, HlcTimestamp.Zero)));
            if (_spans.Count > SpanCapacity)
            {
                Fold();
            }
        }
    }

    /// <summary>The highest timestamp at which another transaction than <paramref name="txn"/> may have read <paramref name="key"/>.</summary>
    public HlcTimestamp MaxRead(byte[] key, Guid txn)
    {
        lock (_gate)
        {
            var max = _low;
            if (_points.TryGetValue(key, out var e))
            {
                max = HlcTimestamp.Max(max, e.For(txn));
            }

            foreach (var (s, end, se) in _spans)
            {
                if (key.AsSpan().SequenceCompareTo(s) >= 0 && (end is null || key.AsSpan().SequenceCompareTo(end) < 0))
                {
                    max = HlcTimestamp.Max(max, se.For(txn));
                }
            }

            return max;
        }
    }

    private void Fold()
    {
        foreach (var e in _points.Values)
        {
            _low = HlcTimestamp.Max(_low, e.Max);
        }

        foreach (var (_, _, e) in _spans)
        {
            _low = HlcTimestamp.Max(_low, e.Max);
        }

        _points.Clear();
        _spans.Clear();
    }

    /// <summary>The highest read (<see cref="Max"/>, by <see cref="MaxTxn"/>) and the highest by any other transaction.</summary>
    private readonly record struct Entry(HlcTimestamp Max, Guid MaxTxn, HlcTimestamp Others)
    {
        public HlcTimestamp For(Guid txn) => txn != Guid.Empty && txn == MaxTxn ? Others : Max;

        public Entry With(HlcTimestamp ts, Guid txn)
        {
            if (txn == MaxTxn && txn != Guid.Empty)
            {
                return this with { Max = HlcTimestamp.Max(Max, ts) };
            }

            return ts > Max
                ? new Entry(ts, txn, HlcTimestamp.Max(Others, Max))
                : this with { Others = HlcTimestamp.Max(Others, ts) };
        }
    }
}

namespace Canopy.Client;

using Canopy.Rpc;

/// <summary>
/// The client's view of the ranges: an immutable array sorted by start key, without overlaps, swapped whole on each
/// change. Readers (every request) binary-search the current snapshot without locking; writers (rare: a range seen
/// for the first time, a new leaseholder) serialise on a lock and publish a new array.
/// </summary>
internal sealed class RangeCache
{
    private readonly object _gate = new();
    private RangeInfo[] _ranges = [];

    public IReadOnlyList<RangeInfo> Snapshot => Volatile.Read(ref _ranges);

    /// <summary>The cached range containing <paramref name="key"/>, or null.</summary>
    public RangeInfo? Find(ReadOnlySpan<byte> key)
    {
        var ranges = Volatile.Read(ref _ranges);
        int lo = 0, hi = ranges.Length - 1, found = -1;
        while (lo <= hi)
        {
            var mid = lo + ((hi - lo) >> 1);
            if (KeyOrder.Compare(ranges[mid].StartKey, key) <= 0)
            {
                found = mid;
                lo = mid + 1;
            }
            else
            {
                hi = mid - 1;
            }
        }

        if (found < 0)
        {
            return null;
        }

        var r = ranges[found];
        return r.EndKey is null || KeyOrder.Compare(key, r.EndKey) < 0 ? r : null;
    }

    /// <summary>
    /// Caches <paramref name="info"/>, evicting every entry it overlaps. A view of the same range (same id and
    /// bounds) at an older Raft term than the cached one is ignored: it comes from a replica that lags.
    /// </summary>
    public void Learn(RangeInfo info)
    {
        if (!IsWellFormed(info))
        {
            return;
        }

        // Fast path (the common case: every response carries its range): nothing new.
        var current = Find(info.StartKey);
        if (current is not null && SameRouting(current, info))
        {
            return;
        }

        lock (_gate)
        {
            current = Find(info.StartKey);
            if (current is not null && current.RangeId == info.RangeId && SameBounds(current, info))
            {
                if (SameRouting(current, info) || info.Term < current.Term)
                {
                    return;
                }

                // A view that names the same leaseholder without its address keeps the address already known.
                if (info.LeaseholderAddress is null && info.Leaseholder != 0 && info.Leaseholder == current.Leaseholder)
                {
                    info = info with { LeaseholderAddress = current.LeaseholderAddress };
                }
            }

            Replace(info);
        }
    }

    /// <summary>Sets the leaseholder of the cached range containing <paramref name="key"/> (a NotLeaseholder hint).</summary>
    public void SetLeaseholder(ReadOnlySpan<byte> key, ulong nodeId, string? address)
    {
        lock (_gate)
        {
            var current = Find(key);
            if (current is null || (current.Leaseholder == nodeId && current.LeaseholderAddress == address))
            {
                return;
            }

            Replace(current with { Leaseholder = nodeId, LeaseholderAddress = address });
        }
    }

    /// <summary>Drops <paramref name="range"/> (if still cached as is).</summary>
    public void Remove(RangeInfo range)
    {
        lock (_gate)
        {
            var ranges = _ranges;
            var i = Array.IndexOf(ranges, range);
            if (i < 0)
            {
                return;
            }

            var next = new RangeInfo[ranges.Length - 1];
            Array.Copy(ranges, 0, next, 0, i);
            Array.Copy(ranges, i + 1, next, i, ranges.Length - i - 1);
            Volatile.Write(ref _ranges, next);
        }
    }

    /// <summary>Forgets the leaseholder of every range whose leaseholder <paramref name="isOn"/> says is affected.</summary>
    public void ClearLeaseholders(Func<RangeInfo, bool> isOn)
    {
        lock (_gate)
        {
            var ranges = _ranges;
            RangeInfo[]? next = null;
            for (var i = 0; i < ranges.Length; i++)
            {
                var r = ranges[i];
                if ((r.Leaseholder != 0 || r.LeaseholderAddress is not null) && isOn(r))
                {
                    next ??= (RangeInfo[])ranges.Clone();
                    next[i] = r with { Leaseholder = 0, LeaseholderAddress = null };
                }
            }

            if (next is not null)
            {
                Volatile.Write(ref _ranges, next);
            }
        }
    }

    public void Clear()
    {
        lock (_gate)
        {
            Volatile.Write(ref _ranges, []);
        }
    }

    private void Replace(RangeInfo info)
    {
        var ranges = _ranges;
        var next = new List<RangeInfo>(ranges.Length + 1);
        var inserted = false;
        foreach (var r in ranges)
        {
            if (Overlaps(r, info))
            {
                continue;
            }

            if (!inserted && KeyOrder.Compare(r.StartKey, info.StartKey) > 0)
            {
                next.Add(info);
                inserted = true;
            }

            next.Add(r);
        }

        if (!inserted)
        {
            next.Add(info);
        }

        Volatile.Write(ref _ranges, next.ToArray());
    }

    internal static bool IsWellFormed(RangeInfo info) =>
        info.StartKey is not null && (info.EndKey is null || KeyOrder.Compare(info.StartKey, info.EndKey) < 0);

    private static bool Overlaps(RangeInfo a, RangeInfo b) =>
        (a.EndKey is null || KeyOrder.Compare(b.StartKey, a.EndKey) < 0) &&
        (b.EndKey is null || KeyOrder.Compare(a.StartKey, b.EndKey) < 0);

    private static bool SameBounds(RangeInfo a, RangeInfo b) =>
        a.StartKey.AsSpan().SequenceEqual(b.StartKey) &&
        (a.EndKey is null ? b.EndKey is null : b.EndKey is not null && a.EndKey.AsSpan().SequenceEqual(b.EndKey));

    /// <summary>Whether <paramref name="seen"/> would route like <paramref name="cached"/> (an address-less view of the same leaseholder does).</summary>
    private static bool SameRouting(RangeInfo cached, RangeInfo seen) =>
        cached.RangeId == seen.RangeId && SameBounds(cached, seen) && cached.Leaseholder == seen.Leaseholder &&
        (seen.LeaseholderAddress is null ? cached.Leaseholder != 0 || cached.LeaseholderAddress is null
                                         : string.Equals(cached.LeaseholderAddress, seen.LeaseholderAddress, StringComparison.Ordinal));
}

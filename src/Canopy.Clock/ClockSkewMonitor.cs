using System.Globalization;

namespace Canopy.Clock;

/// <summary>
/// Decides whether this server's clock is trustworthy (DESIGN §5): it keeps the latest measured clock offset to each
/// peer and reports the server unhealthy when its clock is further than the max offset from a majority of the peers
/// it has measured, so the server can refuse to serve and say why.
///
/// Guarantees:
/// - <see cref="IsHealthy"/> is false exactly when strictly more than half of the peers with a current measurement are
///   further than <see cref="MaxOffset"/> away (|offset| &gt; max offset). Examples: in a 3-server cluster the one
///   server that is off sees 2 of 2 peers far (unhealthy) while each good server sees 1 of 2 far (healthy); with a
///   single peer that is far, both servers call themselves unhealthy (nobody can tell which clock is wrong).
/// - With no current measurement the server is healthy (a single-server cluster has nobody to disagree with).
/// - Only the latest measurement per peer counts. With a measurement TTL, measurements older than it are ignored, so
///   a peer that stopped answering neither condemns nor vouches for this clock.
/// - The reason is one deterministic line (peers in id order), e.g. "clock is more than the max offset 500 ms away
///   from 2 of 3 peers (peer 2: +740 ms, peer 3: -612 ms); refusing to serve".
/// - Thread-safe.
/// </summary>
public sealed class ClockSkewMonitor
{
    private readonly Lock _lock = new();
    private readonly SortedDictionary<ulong, Measurement> _latest = [];
    private readonly TimeProvider? _time;
    private readonly TimeSpan _ttl;

    /// <summary>A monitor whose measurements never expire.</summary>
    public ClockSkewMonitor(TimeSpan maxOffset)
    {
        if (maxOffset <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(maxOffset), maxOffset, "the maximum clock offset must be positive");
        }

        MaxOffset = maxOffset;
    }

    /// <summary>A monitor that ignores measurements older than <paramref name="measurementTtl"/> by <paramref name="time"/>.</summary>
    public ClockSkewMonitor(TimeSpan maxOffset, TimeProvider time, TimeSpan measurementTtl)
        : this(maxOffset)
    {
        ArgumentNullException.ThrowIfNull(time);
        if (measurementTtl <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(measurementTtl), measurementTtl, "the measurement TTL must be positive");
        }

        _time = time;
        _ttl = measurementTtl;
    }

    /// <summary>The largest tolerated distance between this server's clock and a peer's.</summary>
    public TimeSpan MaxOffset { get; }

    /// <summary>Peers with a current (not expired) measurement.</summary>
    public int MeasuredPeers
    {
        get
        {
            lock (_lock)
            {
                return Current().Count;
            }
        }
    }

    /// <summary>
    /// Records the latest measured offset to <paramref name="peerId"/>: the peer's clock minus ours (positive: the
    /// peer is ahead). Replaces the previous measurement of that peer.
    /// </summary>
    public void Record(ulong peerId, TimeSpan offset)
    {
        var at = _time?.GetUtcNow() ?? default;
        lock (_lock)
        {
            _latest[peerId] = new Measurement(offset, at);
        }
    }

    /// <summary>Drops the measurement of a peer (e.g. removed from the cluster). True if there was one.</summary>
    public bool Forget(ulong peerId)
    {
        lock (_lock)
        {
            return _latest.Remove(peerId);
        }
    }

    /// <summary>
    /// False when this server's clock is further than <see cref="MaxOffset"/> from a majority of the measured peers;
    /// <paramref name="reason"/> says why (or, when healthy, how many peers agree).
    /// </summary>
    public bool IsHealthy(out string reason)
    {
        List<KeyValuePair<ulong, TimeSpan>> current;
        lock (_lock)
        {
            current = Current();
        }

        var max = ClockOffsetException.FormatMilliseconds(MaxOffset.Ticks * 100);
        if (current.Count == 0)
        {
            reason = "no clock offset measurements to peers yet";
            return true;
        }

        var far = current.Where(p => p.Value.Duration() > MaxOffset).ToList();
        if (far.Count * 2 > current.Count)
        {
            var detail = string.Join(", ", far.Select(p => string.Create(CultureInfo.InvariantCulture, $"peer {p.Key}: {Signed(p.Value)}")));
            reason = $"clock is more than the max offset {max} away from {far.Count} of {current.Count} peers ({detail}); refusing to serve";
            return false;
        }

        reason = $"clock is within the max offset {max} of {current.Count - far.Count} of {current.Count} peers";
        return true;
    }

    private static string Signed(TimeSpan offset) =>
        (offset < TimeSpan.Zero ? "-" : "+") + ClockOffsetException.FormatMilliseconds(offset.Duration().Ticks * 100);

    private List<KeyValuePair<ulong, TimeSpan>> Current()
    {
        var cutoff = _time is null ? DateTimeOffset.MinValue : _time.GetUtcNow() - _ttl;
        return _latest.Where(p => p.Value.At >= cutoff).Select(p => KeyValuePair.Create(p.Key, p.Value.Offset)).ToList();
    }

    private readonly record struct Measurement(TimeSpan Offset, DateTimeOffset At);
}

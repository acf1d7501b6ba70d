// PeerTransportOptions: the knobs of a PeerTransport. Validate() rejects nonsensical values with ArgumentException
// at construction, so a misconfiguration fails at start-up rather than at the first frame. ToString never prints the
// cluster secret.
namespace Canopy.Transport;

/// <summary>Configuration of a <see cref="PeerTransport"/>.</summary>
public sealed record PeerTransportOptions
{
    /// <summary>Shared by every server of the cluster; both ends of a connection must present the same one.</summary>
    public required string ClusterSecret { get; init; }

    /// <summary>Largest frame payload sent or accepted (default 64 MiB, the Raft message codec's limit).</summary>
    public int MaxFrameBytes { get; init; } = 64 * 1024 * 1024;

    /// <summary>
    /// Most frames waiting per peer. The Raft layer batches everything for one server into about one frame per
    /// tick (milliseconds), so 4096 frames are several seconds of traffic: enough to ride out a reconnect (backoff
    /// is at most 1 s) without drops, and short enough that what is dropped beyond it is stale anyway (Raft
    /// retransmits from its own state).
    /// </summary>
    public int SendQueueFrames { get; init; } = 4096;

    /// <summary>
    /// Most bytes waiting per peer (headers included): caps memory per unreachable peer. Raised internally to one
    /// maximum-size frame so that any legal frame can be queued.
    /// </summary>
    public long SendQueueBytes { get; init; } = 64 * 1024 * 1024;

    /// <summary>First delay between failed dials; doubles up to <see cref="ReconnectMaxBackoff"/>.</summary>
    public TimeSpan ReconnectInitialBackoff { get; init; } = TimeSpan.FromMilliseconds(50);

    public TimeSpan ReconnectMaxBackoff { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Limit on establishing the TCP connection when dialing.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Limit on the handshake, on both sides (a silent client is dropped after this).</summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Inbound connections still in their handshake beyond this are closed at once.</summary>
    public int MaxPendingHandshakes { get; init; } = 64;

    /// <summary>
    /// Benchmarks only: every frame sent to another server is held this long before it enters the peer's send
    /// queue (a WAN-like one-way delay; order per peer is kept, the sender never blocks). Zero (the default) in
    /// production. Held frames count against a bound like the send queue's; at most <see cref="MaxInjectedDelay"/>.
    /// </summary>
    public TimeSpan InjectedDelay { get; init; }

    /// <summary>Largest accepted <see cref="InjectedDelay"/>.</summary>
    public static TimeSpan MaxInjectedDelay => TimeSpan.FromSeconds(10);

    public override string ToString() =>
        $"PeerTransportOptions {{ MaxFrameBytes = {MaxFrameBytes}, SendQueueFrames = {SendQueueFrames}, SendQueueBytes = {SendQueueBytes}, " +
        $"Backoff = {ReconnectInitialBackoff}..{ReconnectMaxBackoff}, ConnectTimeout = {ConnectTimeout}, HandshakeTimeout = {HandshakeTimeout}, InjectedDelay = {InjectedDelay} }}";

    internal void Validate()
    {
        if (string.IsNullOrEmpty(ClusterSecret))
        {
            throw new ArgumentException("the cluster secret must not be empty", nameof(ClusterSecret));
        }

        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxFrameBytes);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(MaxFrameBytes, 1 << 30);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(SendQueueFrames);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(SendQueueBytes);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(SendQueueBytes, 1L << 30);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(ReconnectInitialBackoff, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfLessThan(ReconnectMaxBackoff, ReconnectInitialBackoff);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(ConnectTimeout, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(HandshakeTimeout, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxPendingHandshakes);
        ArgumentOutOfRangeException.ThrowIfLessThan(InjectedDelay, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(InjectedDelay, MaxInjectedDelay);
    }
}

namespace Canopy.Gateway;

/// <summary>Limits and authentication of the WebSocket gateway (docs/protocol.md, "Limits").</summary>
public sealed record GatewayOptions
{
    /// <summary>The local-development token. A placeholder for real authentication: change it on any shared server.</summary>
    public const string DevelopmentToken = "canopy-dev-token";

    /// <summary>The shared token every client must present in its hello.</summary>
    public string Token { get; init; } = DevelopmentToken;

    /// <summary>Largest incoming message (one Variant), in bytes. A larger one is answered too_large and the connection closed.</summary>
    public int MaxFrameBytes { get; init; } = 1024 * 1024;

    /// <summary>Largest outgoing message; a result that would be larger (a wide scan) is answered too_large instead.</summary>
    public int MaxResponseBytes { get; init; } = 4 * 1024 * 1024;

    /// <summary>Token bucket: messages per second a connection may send, sustained.</summary>
    public double RatePerSecond { get; init; } = 500;

    /// <summary>Token bucket: the burst (bucket size).</summary>
    public int RateBurst { get; init; } = 1000;

    /// <summary>Rejected (rate-limited) messages in a row after which the connection is closed (policy violation).</summary>
    public int MaxRejectedInARow { get; init; } = 1000;

    /// <summary>Requests of one connection executing at once; further messages wait unread in the socket.</summary>
    public int MaxInFlight { get; init; } = 16;

    /// <summary>Responses queued for one connection; see docs/protocol.md for the size.</summary>
    public int OutgoingQueue { get; init; } = 64;

    /// <summary>How long a response may wait for room in a full outgoing queue, or a send may take, before the
    /// connection is considered stuck and closed.</summary>
    public TimeSpan SendTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Time allowed between the WebSocket upgrade and the hello.</summary>
    public TimeSpan HelloTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Open transactions per connection.</summary>
    public int MaxTransactionsPerConnection { get; init; } = 64;

    /// <summary>Largest scan limit a client may ask for (0 or absent = this).</summary>
    public int MaxScanLimit { get; init; } = 1000;
}

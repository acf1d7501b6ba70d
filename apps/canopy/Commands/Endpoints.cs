using System.Globalization;
using System.Net;

namespace Canopy.Cli.Commands;

/// <summary>Parses HOST:PORT addresses given on the command line (IPv4, [IPv6] or a resolvable host name).</summary>
public static class Endpoints
{
    public static IPEndPoint Parse(string text, string option)
    {
        var colon = text.LastIndexOf(':');
        if (colon <= 0 || colon == text.Length - 1)
        {
            throw CliException.Usage($"invalid address '{text}' for {option}: expected HOST:PORT");
        }

        var host = text[..colon].Trim('[', ']');
        if (!int.TryParse(text[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out var port) || port is < 0 or > 65535)
        {
            throw CliException.Usage($"invalid port in '{text}' for {option}");
        }

        if (IPAddress.TryParse(host, out var ip))
        {
            return new IPEndPoint(ip, port);
        }

        try
        {
            var addresses = Dns.GetHostAddresses(host);
            var chosen = addresses.FirstOrDefault(a => a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork) ?? addresses.FirstOrDefault();
            return chosen is null
                ? throw CliException.Usage($"cannot resolve host '{host}' for {option}")
                : new IPEndPoint(chosen, port);
        }
        catch (System.Net.Sockets.SocketException)
        {
            throw CliException.Usage($"cannot resolve host '{host}' for {option}");
        }
    }

    /// <summary>Parses "1=HOST:PORT,2=HOST:PORT,...".</summary>
    public static Dictionary<ulong, IPEndPoint> ParseMembers(string text, string option)
    {
        var result = new Dictionary<ulong, IPEndPoint>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var eq = part.IndexOf('=');
            if (eq <= 0 || !ulong.TryParse(part[..eq], NumberStyles.None, CultureInfo.InvariantCulture, out var id) || id == 0)
            {
                throw CliException.Usage($"invalid member '{part}' for {option}: expected ID=HOST:PORT with ID > 0");
            }

            if (!result.TryAdd(id, Parse(part[(eq + 1)..], option)))
            {
                throw CliException.Usage($"member id {id} appears twice in {option}");
            }
        }

        return result.Count == 0 ? throw CliException.Usage($"{option} needs at least one member") : result;
    }
}

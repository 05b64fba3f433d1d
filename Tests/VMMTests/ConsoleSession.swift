import Foundation

/// A command (the release `swiftkvm run`) as a child process with its
/// console on pipes: a test types into its standard input and reads what it
/// printed (standard output and error together) line by line, each line
/// stamped with the host's time when it arrived, so that the guest's clocks
/// can be compared with the host's.
final class ConsoleSession: @unchecked Sendable {
    struct Line {
        var text: String
        var time: Date
    }

    private let process = Process()
    private let input = Pipe()
    private let condition = NSCondition()
    private var text = ""
    private var lines: [Line] = []
    private var partial: [UInt8] = []
    private var outputEnded = false

    /// Starts `executable` with `arguments` under `timeout`, which ends a
    /// guest that hangs after `seconds` even if the test process is gone.
    init(_ executable: String, _ arguments: [String], seconds: Int = 900) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        process.arguments = [String(seconds), executable] + arguments
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let reading = output.fileHandleForReading
        let thread = Thread { [self] in
            while true {
                let data = reading.availableData
                if data.isEmpty { break }
                received(Array(data))
            }
            condition.withLock {
                if !partial.isEmpty { lines.append(Line(text: Self.line(partial), time: Date())) }
                outputEnded = true
                condition.broadcast()
            }
        }
        thread.name = "console session output"
        thread.start()
    }

    private static func line(_ bytes: [UInt8]) -> String {
        String(decoding: bytes, as: UTF8.self).replacingOccurrences(of: "\r", with: "")
    }

    private func received(_ bytes: [UInt8]) {
        let now = Date()
        condition.withLock {
            text += String(decoding: bytes, as: UTF8.self)
            for byte in bytes {
                if byte == UInt8(ascii: "\n") {
                    lines.append(Line(text: Self.line(partial), time: now))
                    partial.removeAll()
                } else {
                    partial.append(byte)
                }
            }
            condition.broadcast()
        }
    }

    /// Everything printed so far.
    var output: String { condition.withLock { text } }

    /// The complete lines printed so far, without their "\r".
    var allLines: [Line] { condition.withLock { lines } }

    /// Waits until the output contains `marker`; false after `timeout`
    /// seconds or when the output ended without it.
    func waitFor(_ marker: String, timeout: Double) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        condition.lock()
        defer { condition.unlock() }
        while !text.contains(marker) {
            if outputEnded || !condition.wait(until: deadline) { return text.contains(marker) }
        }
        return true
    }

    /// Types `text` on the guest's console.
    func type(_ text: String) throws {
        try input.fileHandleForWriting.write(contentsOf: Data(text.utf8))
    }

    /// Waits for the process to end and returns its status; nil if it still
    /// runs after `timeout` seconds.
    func waitForExit(timeout: Double) -> Int32? {
        let deadline = Date(timeIntervalSinceNow: timeout)
        condition.lock()
        while !outputEnded {
            if !condition.wait(until: deadline) { break }
        }
        condition.unlock()
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        return process.isRunning ? nil : process.terminationStatus
    }

    /// Ends the process if it still runs (`timeout` passes SIGTERM on to swiftkvm).
    func terminate() {
        if process.isRunning { process.terminate() }
        try? input.fileHandleForWriting.close()
    }
}

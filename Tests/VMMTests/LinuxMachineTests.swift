import Foundation
import KVM
import LinuxBoot
import Testing
@testable import VMM

/// Collects what vCPU threads hand over, for a test thread to poll.
final class Collected<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [T] = []
    func append(_ item: T) { lock.withLock { items.append(item) } }
    var all: [T] { lock.withLock { items } }
}

enum CloudKernel {
    static func path() throws -> String {
        guard let path = DebianCloudKernel.installedPath() else { throw LinuxKernelEntryTests.KernelMissing() }
        return path
    }
}

struct LinuxMachineCPUIDTests {
    @Test func eachVCPUsCPUIDCarriesItsAPICID() {
        let supported = [
            CPUIDEntry(function: 1, eax: 0x806f8, ebx: 0x0a_0800, ecx: 1, edx: 2),
            CPUIDEntry(function: 0xb, index: 0, eax: 1, ebx: 1, ecx: 0x100, edx: 0),
            CPUIDEntry(function: 0xb, index: 1, eax: 7, ebx: 4, ecx: 0x201, edx: 0),
            CPUIDEntry(function: 0x1f, index: 0, edx: 0),
            CPUIDEntry(function: 7, ebx: 0x1234),
        ]
        let entries = LinuxMachine.cpuid(supported, apicID: 3)
        #expect(entries[0].ebx == 0x030a_0800)
        #expect(entries[0].eax == 0x806f8 && entries[0].ecx == 1 && entries[0].edx == 2)
        #expect(entries[1].edx == 3 && entries[2].edx == 3 && entries[3].edx == 3)
        #expect(entries[2].ecx == 0x201)
        #expect(entries[4] == supported[4])
    }
}

/// Debian's cloud kernel with the busybox initramfs, on the host's
/// /dev/kvm. On this kvm_pvm host the kernel runs through KVM's emulator
/// at some 1M instructions/s: its decompressor programs COM1 for
/// `earlyprintk` within seconds, then needs minutes to decompress (the
/// Debian kernel has no CONFIG_X86_VERBOSE_BOOTUP, so it prints nothing
/// meanwhile). The test waits for that UART setup on the machine's bus,
/// then stops the machine and checks that nothing of it is left.
@Suite(.enabled(if: HostKVM.isAvailable)) struct LinuxMachineTests {
    @Test func theCloudKernelProgramsCOM1ThroughTheMachineAndStopEndsEveryThread() throws {
        let initrd = try buildInitramfs()
        defer { try? FileManager.default.removeItem(atPath: initrd) }
        let configuration = MachineConfiguration(kernelPath: try CloudKernel.path(), initrdPath: initrd,
                                                 memorySize: 256 << 20, cpuCount: 2)
        let output = Collected<UInt8>()
        let accesses = Collected<BusAccess>()
        weak var weakVM: VirtualMachine?
        weak var weakMachine: LinuxMachine?
        do {
            let machine = try LinuxMachine(configuration: configuration, hypervisor: try Hypervisor(accelerator: .host),
                                           output: { output.append($0) })
            weakVM = machine.vm
            weakMachine = machine
            #expect(machine.vcpus.map(\.id) == [0, 1])
            #expect(try machine.vcpus[0].registers().rip == machine.boot.kernel.entryPoint)
            #expect(try machine.vcpus[0].registers().rsi == LinuxBootLayout.zeroPageAddress)
            #expect(try machine.vcpus[1].cpuid().first { $0.function == 1 }.map { $0.ebx >> 24 } == 1)
            #expect(machine.ports.ranges.map(\.name)
                == ["i8042 data", "i8042 command", "CMOS RTC", "POST", "COM1 16550A", "ACPI PM", "reset control"])
            machine.withDevices {
                machine.ports.trace = { access in
                    if access.isWrite && (0x3f8...0x3ff).contains(access.address) { accesses.append(access) }
                }
            }

            machine.start()
            #expect(machine.runningThreadCount == 2)
            // early_serial_init(): LCR, IER, FCR, MCR, LCR|DLAB, DLL, DLM, LCR.
            let deadline = Date(timeIntervalSinceNow: 60)
            while accesses.all.count < 8 && Date() < deadline {
                if let outcome = try machine.wait(timeout: 0.2) {
                    Issue.record("the machine ended early with \(outcome)")
                    break
                }
            }
            let writes = accesses.all
            #expect(writes.prefix(8).map(\.address) == [0x3fb, 0x3f9, 0x3fa, 0x3fc, 0x3fb, 0x3f8, 0x3f9, 0x3fb])
            // earlyprintk=serial without a baud rate is 9600 in the decompressor
            // (DEFAULT_BAUD, arch/x86/boot/early_serial_console.c): divisor 12.
            #expect(writes.prefix(8).map(\.value) == [0x03, 0x00, 0x00, 0x03, 0x83, 12, 0x00, 0x03])
            let text = String(decoding: output.all, as: UTF8.self)
            if !text.isEmpty { print("serial output so far: \(text)") }

            machine.stop()
            #expect(try machine.wait(timeout: 10) == .stopped)
            #expect(machine.runningThreadCount == 0)
            // A second stop changes nothing.
            machine.stop()
            #expect(try machine.wait() == .stopped)
        }
        // The machine, its VM and vCPU descriptors go when the last reference does.
        #expect(weakMachine == nil)
        #expect(weakVM == nil)
    }

    @Test func aMissingKernelIsAConfigurationError() throws {
        let configuration = MachineConfiguration(kernelPath: "/nonexistent/vmlinuz")
        #expect {
            _ = try LinuxMachine(configuration: configuration, hypervisor: try Hypervisor(accelerator: .host), output: { _ in })
        } throws: { error in
            guard let error = error as? MachineError, case .configuration(.missingFile(what: "kernel", path: "/nonexistent/vmlinuz")) = error else {
                return false
            }
            return true
        }
    }
}

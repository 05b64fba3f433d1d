import CLinuxKVM
import Foundation
@testable import KVM
@testable import SoftKVM
import SystemPackage
import Testing

/// KVM_CREATE_DEVICE and the device file's requests, the same sequence on
/// the host's /dev/kvm and on SoftKVM: x86's one device type (kvm-vfio),
/// its attribute rules and errno for every kind of bad input. No VFIO file
/// exists on these machines, so adding one succeeding is not checked here;
/// every refusal path is.
@Suite(.enabled(if: HostKVM.isAvailable)) struct DeviceDifferentialTests {
    @Test func deviceTypesAgree() throws {
        try expectSameOnBothBackends { hypervisor in
            let vm = try hypervisor.createVM()
            var results: [(String, Outcome)] = [
                ("KVM_CAP_DEVICE_CTRL", outcome { () throws(KVMError) in try hypervisor.checkExtension(.deviceCtrl) }),
            ]
            for type in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xFFFF, UInt32.max] as [UInt32] {
                results.append(("test type \(type)", outcome { () throws(KVMError) in
                    _ = try vm.canCreateDevice(DeviceType(rawValue: type)) ? Int32(1) : 0
                }))
                results.append(("can create \(type)", .ok((try? vm.canCreateDevice(DeviceType(rawValue: type))) == true ? 1 : 0)))
            }
            let backend = hypervisor.handle.backend
            results.append(("bad pointer", rawOutcome(backend, vm.rawDescriptor, KVMRequest.createDevice.number, value: 8)))
            return results
        }
    }

    @Test func vfioDeviceRulesAgree() throws {
        try expectSameOnBothBackends { hypervisor in
            let vm = try hypervisor.createVM()
            let backend = hypervisor.handle.backend
            let device = try vm.createDevice(.vfio)
            let notVFIO = open("/dev/null", O_RDONLY)
            defer { close(notVFIO) }
            var closedDescriptor = open("/dev/null", O_RDONLY)
            close(closedDescriptor)
            closedDescriptor = closedDescriptor + 1000
            let results: [(String, Outcome)] = [
                ("descriptor is valid", .ok(fcntl(device.rawDescriptor, F_GETFD) >= 0 ? 1 : 0)),
                ("close-on-exec", .ok(fcntl(device.rawDescriptor, F_GETFD) & FD_CLOEXEC)),
                ("second vfio device", outcome { () throws(KVMError) in _ = try vm.createDevice(.vfio) }),
                ("test while one exists", .ok(try vm.canCreateDevice(.vfio) ? 1 : 0)),
                ("has add", .ok(try device.hasAttribute(.vfioFileAdd) ? 1 : 0)),
                ("has delete", .ok(try device.hasAttribute(.vfioFileDelete) ? 1 : 0)),
                ("has attribute 3", .ok(try device.hasAttribute(DeviceAttribute(group: 1, attribute: 3)) ? 1 : 0)),
                ("has group 2", .ok(try device.hasAttribute(DeviceAttribute(group: 2, attribute: 1)) ? 1 : 0)),
                ("add a non-VFIO file", outcome { () throws(KVMError) in try device.setAttribute(.vfioFileAdd, descriptor: notVFIO) }),
                ("add a closed descriptor", outcome { () throws(KVMError) in try device.setAttribute(.vfioFileAdd, descriptor: closedDescriptor) }),
                ("add -1", outcome { () throws(KVMError) in try device.setAttribute(.vfioFileAdd, descriptor: -1) }),
                ("delete one never added", outcome { () throws(KVMError) in try device.setAttribute(.vfioFileDelete, descriptor: notVFIO) }),
                ("delete a closed descriptor", outcome { () throws(KVMError) in try device.setAttribute(.vfioFileDelete, descriptor: closedDescriptor) }),
                ("add with a bad value pointer", outcome { () throws(KVMError) in
                    try device.setAttribute(.vfioFileAdd, value: UnsafeRawPointer(bitPattern: 8))
                }),
                ("set attribute 3", outcome { () throws(KVMError) in try device.setAttribute(DeviceAttribute(group: 1, attribute: 3), descriptor: notVFIO) }),
                ("set group 2", outcome { () throws(KVMError) in try device.setAttribute(DeviceAttribute(group: 2, attribute: 1), descriptor: notVFIO) }),
                ("get attribute", outcome { () throws(KVMError) -> Void in
                    var value: Int32 = 0
                    try device.getAttribute(.vfioFileAdd, into: &value)
                }),
                ("set with a bad attribute pointer", rawOutcome(backend, device.rawDescriptor, KVMRequest.setDeviceAttr.number, value: 8)),
                ("has with a bad attribute pointer", rawOutcome(backend, device.rawDescriptor, KVMRequest.hasDeviceAttr.number, value: 8)),
                ("get with a bad attribute pointer", rawOutcome(backend, device.rawDescriptor, KVMRequest.getDeviceAttr.number, value: 8)),
                ("unknown request", rawOutcome(backend, device.rawDescriptor, 0xAEFF, value: 0)),
                ("VM request on the device", rawOutcome(backend, device.rawDescriptor, KVMRequest.createVCPU.number, value: 0)),
            ]
            return results
        }
    }

    /// The kernel releases a kvm-vfio device when its file closes, so the
    /// VM can have a new one; a duplicate descriptor keeps it.
    @Test func closingTheLastDescriptorReleasesTheDevice() throws {
        try expectSameOnBothBackends { hypervisor in
            let vm = try hypervisor.createVM()
            let backend = hypervisor.handle.backend
            var request = kvm_create_device(type: DeviceType.vfio.rawValue, fd: 0, flags: 0)
            let first = rawOutcome(backend, vm.rawDescriptor, KVMRequest.createDevice.number, &request)
            let descriptor = Int32(bitPattern: request.fd)
            let copy = dup(descriptor)
            // The kernel sees a dup itself; SoftKVM is told, as the preload library tells it.
            (backend as? SoftBackend)?.duplicate(descriptor, as: copy)
            backend.close(descriptor)
            let whileCopyOpen = outcome { () throws(KVMError) in _ = try vm.createDevice(.vfio) }
            backend.close(copy)
            let afterLastClose = outcome { () throws(KVMError) in _ = try vm.createDevice(.vfio) }
            return [("create", first), ("while a duplicate is open", whileCopyOpen), ("after the last close", afterLastClose)]
        }
    }
}
